"""The calibrate stage. Not implemented yet: see the open issue for it."""

from __future__ import annotations

from typing import Any

from pipeline.config import PipelineConfig
from pipeline.errors import NotImplementedStageError
from pipeline.stages.base import StageContext, StageOutcome
from pipeline.tasks import Task

NAME = "calibrate"
VERSION = 1
TOOLS = ("nvidia-modelopt", "torch", "transformers")


def config_section(config: PipelineConfig, task: Task) -> dict[str, Any]:
    return {
        "precision": task.precision,
        "calibration": config.calibration.model_dump(mode="json"),
        "kv_cache_dtype": config.quantization.kv_cache_dtype,
    }


def run(ctx: StageContext) -> StageOutcome:
    raise NotImplementedStageError(NAME)
