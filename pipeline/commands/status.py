"""`trtllm-pipeline status`: each task of the config as up to date, modified, stale or missing."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.checks import check_work_dir
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import status
from pipeline.execution.results import TaskResult
from pipeline.facts.config import PipelineConfig
from pipeline.planning.tasks import plan_tasks


def status_of(config: PipelineConfig, work_dir: Path) -> list[TaskResult]:
    check_work_dir(work_dir, writes=False)
    return status(config, ArtifactStore(work_dir), plan_tasks(config))
