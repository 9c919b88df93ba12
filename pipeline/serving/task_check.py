"""`smoke --tasks`: the gate's tasks scored against the served deployment, each against the score the
published version's gate.json recorded, so what is served scores as what was gated.

lm-eval asks the server through `ServedLM`, the gate's own adapter code (pipeline.gate.lm_adapter:
tokens, greedy budgets, stop strings) with generation sent to the ensemble's /generate endpoint, or to
a PyTorch-backend release's trtllm-serve (/v1/completions).
The served engines give no log-likelihood of a prompt: a published engine is built without
gather_context_logits (only the gate engine has context logits), and the reference stand-in of the
tensorrt_llm model refuses `return_context_logits` (its output_log_probs are the generated tokens'
only). So a loglikelihood or multiple-choice task is reported as not scored, never approximated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.core.errors import InputError, IntegrityError, StageError
from pipeline.core.hashing import sha256_file
from pipeline.facts.config import GateTask
from pipeline.facts.layout import GATE_JSON
from pipeline.gate.lm_adapter import TokenizerLM
from pipeline.gate.report import GateResult
from pipeline.gate.tasks import TaskScore, Unscored, evaluate_tasks
from pipeline.gate.verdict import TaskResult
from pipeline.runtime.limits import EngineLimits
from pipeline.serving.client import generate
from pipeline.serving.models.tensornames import Text
from pipeline.serving.smoke_report import TaskComparison

SERVED_OUTPUT_TYPES = frozenset({"generate_until"})


@dataclass(frozen=True)
class ServedTasks:
    """What `smoke --tasks` scores: the config's gate.tasks, their data and its cache."""

    tasks: tuple[GateTask, ...]
    task_dir: Path | None
    datasets_cache: Path


class ServedLM(TokenizerLM):
    """The served deployment as an lm-eval model: `complete(prompt, max_tokens)` is its greedy text."""

    def __init__(self, complete: Callable[[str, int], str], tokenizer: Any, limits: EngineLimits) -> None:
        super().__init__(tokenizer, limits, batch_size=limits.max_batch_size)
        self.complete = complete

    def _continue(self, contexts: list[str], max_new: int) -> list[str]:
        # One request at a time, as the smoke's answers are asked.
        return [self.complete(context, max_new) for context in contexts]

    def _loglikelihood_tokens(self, requests: list[Any], **kwargs: Any) -> list[tuple[float, bool]]:
        raise _no_loglikelihoods()

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise _no_loglikelihoods()


def _no_loglikelihoods() -> StageError:
    return StageError(
        "smoke", "the served deployment gives no prompt log-likelihoods: only generate_until tasks"
    )


def ensemble_completion(url: str) -> Callable[[str, int], str]:
    """Greedy text through the ensemble's /generate (the server's defaults are greedy: temperature 1,
    top_k 0, top_p 0, as reference_answers relies on)."""

    def complete(prompt: str, max_tokens: int) -> str:
        return generate(url, "ensemble", {Text.TEXT_INPUT: prompt, Text.MAX_TOKENS: max_tokens})[
            Text.TEXT_OUTPUT
        ]

    return complete


def openai_completion(url: str, model: str) -> Callable[[str, int], str]:
    """Greedy text through trtllm-serve's /v1/completions (temperature 0), with the openai client."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def complete(prompt: str, max_tokens: int) -> str:
        answer = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0)
        return answer.choices[0].text

    return complete


def gated_scores(repository: Path, served: ServedTasks) -> dict[str, TaskResult]:
    """The score the version's gate.json recorded for each of served.tasks (gate.json read from the
    bytes its publish-manifest.json names by sha256), each gated with the same limit and few-shot."""
    gated = _gated_tasks(repository)
    for i, task in enumerate(served.tasks):
        recorded = gated.get(task.name)
        if recorded is None:
            raise InputError(
                f"gate.tasks[{i}] '{task.name}': {repository.resolve() / GATE_JSON} has no score for it "
                f"(gated on: {', '.join(gated) or 'no tasks'})",
                hint="publish the variant afresh (its gate scores the config's tasks), or leave the task out",
            )
        if (recorded.limit, recorded.num_fewshot) != (task.limit, task.num_fewshot):
            raise InputError(
                f"gate.tasks[{i}] '{task.name}': limit {task.limit}, num_fewshot {task.num_fewshot}, but it was "
                f"gated with limit {recorded.limit}, num_fewshot {recorded.num_fewshot}: the scores would not compare",
                hint="publish the variant afresh with these settings, or restore the gated ones",
            )
    return gated


def _gated_tasks(repository: Path) -> dict[str, TaskResult]:
    from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest

    manifest = ReleaseManifest.model_validate_json((repository / RELEASE_MANIFEST).read_text())
    path = repository / GATE_JSON
    entry = next((f for f in manifest.files if f.path == GATE_JSON), None)
    if entry is None or sha256_file(path) != entry.sha256:
        raise IntegrityError(
            f"{path}: not the gate report {RELEASE_MANIFEST} names",
            hint="`trtllm-pipeline publish` publishes a fresh version with its gate report",
        )
    try:
        result = GateResult.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise InputError(
            f"not a gate report ({exc.error_count()} field(s) wrong, first: {_first(exc)})",
            path=path,
            hint="publish the variant afresh from a gate run by this pipeline",
        ) from None
    return {t.task: t for t in result.tasks}


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"


def check_served_tasks(
    complete: Callable[[str, int], str],
    gated: dict[str, TaskResult],
    served: ServedTasks,
    *,
    tokenizer: Any,
    limits: EngineLimits,
) -> list[TaskComparison]:
    """Each of served.tasks scored through `complete`, against its gated score (gated_scores)."""
    lm = ServedLM(complete, tokenizer, limits)
    scores = evaluate_tasks(
        lm,
        tasks=served.tasks,
        task_dir=served.task_dir,
        datasets_cache=served.datasets_cache,
        answers=SERVED_OUTPUT_TYPES,
    )
    return [_compare(gated[s.task], s) for s in scores]


def _compare(gated: TaskResult, served: TaskScore | Unscored) -> TaskComparison:
    # The gated score is the gate engine's (built with context logits, scored in batches of
    # gate.batch_size); the server runs the profile's own engine one request at a time. Even the
    # deterministic greedy CPU reference may then continue differently at a near tie, which the gate
    # already counts as agreement between the two engines (served_near_ties), so equality is not
    # demanded: the scores may differ by the gated score's standard error, and by at least one item
    # (1/items, the score's step), since lm-eval's standard error of a mean of 0/1 items,
    # sqrt(p(1-p)/(n-1)), is 0 when every item is right.
    allowed = max(gated.stderr, 1 / gated.samples)
    if isinstance(served, Unscored):
        return TaskComparison(
            task=gated.task,
            metric=gated.metric,
            samples=gated.samples,
            gated=gated.score,
            allowed=allowed,
            served=None,
            note=f"not scored: it needs {', '.join(served.output_types)}, and the served engine gives no "
            "prompt log-likelihoods (only generate_until tasks are scored served)",
        )
    return TaskComparison(
        task=gated.task,
        metric=gated.metric,
        samples=served.samples,
        gated=gated.score,
        allowed=allowed,
        served=served.score,
    )
