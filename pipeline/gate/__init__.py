"""The accuracy gate: the built candidate against the unquantized Hugging Face reference.

    record = run_gate(reference=..., candidate=..., tokenizer=..., settings=config.gate,
                      thresholds=config.gate.thresholds[precision], limits=..., ...)

Modules: data (tokenized eval windows, prompts, multiple-choice items), metrics
(pure measures), evaluate (one pass per model, then the comparison), verdict
(checks against thresholds), report (gate.json, gate.md, junit.xml).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from pipeline.config import GateSection, GateThresholds
from pipeline.gate.data import GateInputs, prepare_inputs
from pipeline.gate.evaluate import HuggingFaceModel, LanguageModel, Observation, compare, observe
from pipeline.gate.report import GateRecord, write_reports
from pipeline.gate.verdict import checks_for
from pipeline.reporting import Reporter
from pipeline.runtime.limits import RuntimeLimits

__all__ = ["GateRecord", "HuggingFaceModel", "run_gate", "write_reports"]


def run_gate(
    *,
    reference: Callable[[], LanguageModel],
    candidate: Callable[[], LanguageModel],
    tokenizer: Any,
    settings: GateSection,
    thresholds: GateThresholds,
    limits: RuntimeLimits,
    precision: str,
    profile: str,
    reporter: Reporter,
) -> GateRecord:
    """Measure the candidate against the reference on the configured sets and judge it.

    reference/candidate are loaders: each model is loaded, observed and released in
    turn, so a GPU host never holds the Hugging Face model and the engine at once.
    limits are the candidate's (its engine profile): windows, prompts and batches fit them.
    """
    inputs = prepare_inputs(settings, tokenizer, limits)
    reference_obs, reference_s = _observe_timed("reference", reference, inputs, limits, reporter)
    candidate_obs, candidate_s = _observe_timed("candidate", candidate, inputs, limits, reporter)
    measures = compare(reference_obs, candidate_obs, inputs)
    checks = checks_for(measures, thresholds)
    return GateRecord(
        verdict=all(c.passed for c in checks),
        precision=precision,
        profile=profile,
        checks=checks,
        reference_perplexity=measures.reference_perplexity,
        candidate_perplexity=measures.candidate_perplexity,
        exact_greedy_matches=measures.exact_greedy_matches,
        reference_choice_accuracy=measures.reference_choice_accuracy,
        candidate_choice_accuracy=measures.candidate_choice_accuracy,
        windows=len(inputs.windows),
        window_len=len(inputs.windows[0]),
        prompts=len(inputs.prompts),
        max_new_tokens=inputs.max_new_tokens,
        choice_items=len(inputs.choices),
        data=inputs.sources,
        reference_s=round(reference_s, 3),
        candidate_s=round(candidate_s, 3),
    )


def _observe_timed(
    role: str,
    load: Callable[[], LanguageModel],
    inputs: GateInputs,
    limits: RuntimeLimits,
    reporter: Reporter,
) -> tuple[Observation, float]:
    t0 = time.perf_counter()
    model = load()
    total = len(inputs.windows) + len(inputs.prompts) + len(inputs.choices)
    with reporter.progress(f"gate: {role}", total=total) as advance:
        observation = observe(model, inputs, batch_size=limits.max_batch_size, advance=advance)
    del model
    gc.collect()  # the next model may need the memory this one held
    return observation, time.perf_counter() - t0
