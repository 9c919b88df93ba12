"""The build stage. Not implemented yet: see the open issue for it."""

from __future__ import annotations

from typing import Any

from pipeline.config import PipelineConfig
from pipeline.errors import NotImplementedStageError
from pipeline.stages.base import StageContext, StageOutcome
from pipeline.tasks import Task

NAME = "build"
VERSION = 1
TOOLS = ("tensorrt-llm", "tensorrt")


def config_section(config: PipelineConfig, task: Task) -> dict[str, Any]:
    return {
        "target": config.target.gpu,
        "profile": config.profile(task.profile).model_dump(mode="json"),
        "build": config.build.model_dump(mode="json"),
    }


def run(ctx: StageContext) -> StageOutcome:
    raise NotImplementedStageError(NAME)
