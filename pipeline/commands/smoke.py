"""`trtllm-pipeline smoke`: each published repository served by a real tritonserver, its answers
checked against the reference runtime's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.commands.checks import check_filters, check_work_dir
from pipeline.core.errors import StageError
from pipeline.core.reporter import Reporter
from pipeline.facts.config import PipelineConfig
from pipeline.serving.smoke import smoke_published
from pipeline.serving.smoke_report import SmokeReport


@dataclass(frozen=True)
class SmokeResult:
    reports: list[SmokeReport]

    @property
    def error(self) -> StageError | None:
        failures = [c for r in self.reports for c in r.failures]
        if not failures:
            return None
        first = failures[0]
        return StageError(
            "smoke",
            f"{len(failures)} answer(s) differ from the reference runtime; first, {first.route}: "
            f"expected {first.expected!r}, got {first.got!r}",
        )


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
    )
    return SmokeResult(reports)
