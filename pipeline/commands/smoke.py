"""`trtllm-pipeline smoke`: each published repository served by a real tritonserver, its answers
checked against the reference runtime's; with `--tasks`, gate.tasks scored served against the gated scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.commands.checks import check_filters, check_work_dir
from pipeline.core.errors import GateFailedError, PipelineError, StageError
from pipeline.core.reporter import Reporter
from pipeline.facts.config import PipelineConfig
from pipeline.serving.smoke import smoke_published
from pipeline.serving.smoke_report import SmokeReport


@dataclass(frozen=True)
class SmokeResult:
    reports: list[SmokeReport]

    @property
    def error(self) -> PipelineError | None:
        failures = [c for r in self.reports for c in r.failures]
        if failures:
            first = failures[0]
            return StageError(
                "smoke",
                f"{len(failures)} answer(s) differ from the reference runtime; first, {first.route}: "
                f"expected {first.expected!r}, got {first.got!r}",
            )
        tasks = [(r, t) for r in self.reports for t in r.task_failures]
        if tasks:
            report, first = tasks[0]
            return GateFailedError(
                f"{report.repository}: {first.line()}",
                hint="serve the engine that was gated: publish afresh from a passing gate "
                "(`trtllm-pipeline run`), and check that nothing replaced the published engine",
            )
        return None


def smoke(
    config: PipelineConfig,
    work_dir: Path,
    *,
    reporter: Reporter,
    precisions: frozenset[str] = frozenset(),
    profiles: frozenset[str] = frozenset(),
    backends: frozenset[str] = frozenset(),
    prompts: int = 2,
    max_tokens: int | None = None,
    tasks: bool = False,
) -> SmokeResult:
    check_filters(config, precisions, profiles, backends)
    check_work_dir(work_dir)
    reports = smoke_published(
        config,
        work_dir=work_dir,
        reporter=reporter,
        precisions=set(precisions),
        profiles=set(profiles),
        backends=set(backends),
        prompts=prompts,
        max_tokens=max_tokens,
        tasks=tasks,
    )
    return SmokeResult(reports)
