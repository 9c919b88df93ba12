"""`trtllm-pipeline status`: each task of the config as up to date, modified, stale or missing."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.checks import check_filters, check_work_dir
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import status
from pipeline.execution.results import TaskResult
from pipeline.facts.config import PipelineConfig
from pipeline.planning.tasks import plan_tasks, select_tasks
from pipeline.stages import STAGES


def status_of(
    config: PipelineConfig,
    work_dir: Path,
    *,
    precisions: frozenset[str] = frozenset(),
    profiles: frozenset[str] = frozenset(),
    backends: frozenset[str] = frozenset(),
) -> list[TaskResult]:
    """The state of every task, or of the selected variants' tasks and what they are made from."""
    check_filters(config, precisions, profiles, backends)
    check_work_dir(work_dir, writes=False)
    tasks = select_tasks(
        plan_tasks(config),
        set(STAGES),
        precisions=set(precisions),
        profiles=set(profiles),
        backends=set(backends),
    )
    return status(config, ArtifactStore(work_dir), tasks)
