"""The accuracy gate: the precision's gate engine against the unquantized Hugging Face reference,
then the served engine against the gate engine.

    record = run_gate(reference=..., candidate=..., served=..., tokenizer=..., settings=config.gate,
                      thresholds=config.gate.thresholds[precision], limits=..., served_limits=..., ...)

Served engines are built without --gather_context_logits (every response would carry the
prompt's full logits), so the logits the measures need come from the gate engine: the same
checkpoint built with them. The served engine must then continue the gate prompts as the gate
engine does (served_greedy_match).

Modules: data (tokenized eval windows, prompts, multiple-choice items), metrics
(pure measures), evaluate (one pass per model, then the comparison), verdict
(checks against thresholds), report (gate.json, gate.md, junit.xml).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline.core.gpu_memory import GpuStepMemory, gpu_step
from pipeline.core.reporter import Reporter
from pipeline.facts.config import GateSection, GateThresholds
from pipeline.gate.data import prepare_inputs
from pipeline.gate.evaluate import (
    HuggingFaceModel,
    LanguageModel,
    Observation,
    compare,
    continue_prompts,
    observe,
)
from pipeline.gate.report import GateRecord, write_reports
from pipeline.gate.tasks import ScoreCache, TaskGate, TaskScore
from pipeline.gate.verdict import TaskResult, checks_for, task_checks, task_result
from pipeline.runtime.limits import EngineLimits

__all__ = ["GateRecord", "HuggingFaceModel", "ScoreCache", "TaskGate", "run_gate", "write_reports"]

T = TypeVar("T")
Scored = tuple[Observation, list[TaskScore]]


def run_gate(
    *,
    reference: Callable[[], LanguageModel],
    candidate: Callable[[], LanguageModel],
    served: Callable[[], LanguageModel],
    tokenizer: Any,
    settings: GateSection,
    thresholds: GateThresholds,
    limits: EngineLimits,
    served_limits: EngineLimits,
    precision: str,
    profile: str,
    reporter: Reporter,
    tasks: TaskGate | None = None,
) -> GateRecord:
    """Measure the candidate (gate engine) against the reference, the served engine against the candidate.

    reference/candidate/served are loaders: each model is loaded, observed and released in
    turn, so a GPU host never holds two of them at once. limits are the candidate's, served_limits
    the served engine's: windows and choices fit the first, prompts both. At most
    settings.batch_size sequences are in flight at once, whatever the engines' max_batch_size; prompts
    are continued one at a time, so the served engine and the gate engine are compared at one shape.
    With `tasks`, the reference and the candidate are also scored on its lm-eval tasks, through the
    same adapter with the candidate's limits (pipeline.gate.lm_adapter), each score kept in its cache.
    """
    inputs = prepare_inputs(settings, tokenizer, limits, served=served_limits)
    if inputs.cut:
        reporter.warn(inputs.cut)
    batch = min(settings.batch_size, limits.max_batch_size)
    total = len(inputs.windows) + len(inputs.prompts) + len(inputs.choices)

    def full(cache: ScoreCache) -> Callable[[LanguageModel, Callable[[float], None]], Scored]:
        def work(model: LanguageModel, advance: Callable[[float], None]) -> Scored:
            observation = observe(
                model, inputs, batch_size=batch, max_input_len=limits.max_input_len, advance=advance
            )
            if tasks is None:
                return observation, []
            return observation, tasks.scores(
                model, cache, tokenizer=tokenizer, limits=limits, batch_size=batch
            )

        return work

    def prompts_only(model: LanguageModel, advance: Callable[[float], None]) -> list[list[int]]:
        return continue_prompts(model, inputs, advance=advance)

    memory: list[GpuStepMemory] = []
    no_cache = ScoreCache(None)
    (reference_obs, reference_tasks), reference_s = _timed(
        "reference", reference, full(tasks.reference_scores if tasks else no_cache), total, reporter, memory
    )
    (candidate_obs, candidate_tasks), candidate_s = _timed(
        "gate engine", candidate, full(tasks.candidate_scores if tasks else no_cache), total, reporter, memory
    )
    served_out, served_s = _timed(
        "served engine", served, prompts_only, len(inputs.prompts), reporter, memory
    )
    measures = compare(reference_obs, candidate_obs, served_out, inputs)
    checks = checks_for(measures, thresholds, min_served_greedy_match=settings.min_served_greedy_match)
    task_results: list[TaskResult] = []
    if tasks is not None:
        task_results = [
            task_result(r, c, min_recovery=tasks.min_recovery, max_drop_points=tasks.max_drop_points)
            for r, c in zip(reference_tasks, candidate_tasks, strict=True)
        ]
        checks += [check for result in task_results for check in task_checks(result)]
    return GateRecord(
        verdict=all(c.passed for c in checks),
        precision=precision,
        profile=profile,
        checks=checks,
        reference_perplexity=measures.reference_perplexity,
        candidate_perplexity=measures.candidate_perplexity,
        exact_greedy_matches=measures.exact_greedy_matches,
        served_exact_greedy_matches=measures.served_exact_greedy_matches,
        served_near_ties=measures.served_near_ties,
        reference_choice_accuracy=measures.reference_choice_accuracy,
        candidate_choice_accuracy=measures.candidate_choice_accuracy,
        windows=len(inputs.windows),
        window_len=len(inputs.windows[0]),
        prompts=len(inputs.prompts),
        max_new_tokens=inputs.max_new_tokens,
        choice_items=len(inputs.choices),
        batch_size=batch,
        data=inputs.sources,
        tasks=task_results,
        reference_s=round(reference_s, 3),
        candidate_s=round(candidate_s, 3),
        served_s=round(served_s, 3),
        gpu_memory=memory,
    )


def _timed(
    role: str,
    load: Callable[[], LanguageModel],
    work: Callable[[LanguageModel, Callable[[float], None]], T],
    total: int,
    reporter: Reporter,
    memory: list[GpuStepMemory],
) -> tuple[T, float]:
    """Load, use and release one model as one GPU step: the next one loads into the memory it gave back."""
    t0 = time.perf_counter()
    with gpu_step(f"gate: {role}", memory, stage="gate"):
        model = load()
        try:
            with reporter.progress(f"gate: {role}", total=total) as advance:
                result = work(model, advance)
        finally:
            close = getattr(model, "close", None)
            if close is not None:
                close()  # an engine's device memory goes now, not when Python collects the runner
            del model
            gc.collect()
    return result, time.perf_counter() - t0
