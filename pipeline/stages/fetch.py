"""The fetch stage. Not implemented yet: see the open issue for it."""

from __future__ import annotations

from typing import Any

from pipeline.config import PipelineConfig
from pipeline.errors import NotImplementedStageError
from pipeline.stages.base import StageContext, StageOutcome
from pipeline.tasks import Task

NAME = "fetch"
VERSION = 1
TOOLS = ("huggingface-hub",)


def config_section(config: PipelineConfig, task: Task) -> dict[str, Any]:
    return config.model.model_dump(mode="json")


def run(ctx: StageContext) -> StageOutcome:
    raise NotImplementedStageError(NAME)
