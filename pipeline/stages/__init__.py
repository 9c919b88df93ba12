"""One module per stage; STAGES maps a stage name to its module (imported lazily)."""

from __future__ import annotations

import importlib

from pipeline.planning.tasks import STAGE_ORDER
from pipeline.stages.base import StageModule


def stage_module(name: str) -> StageModule:
    if name not in STAGE_ORDER:
        raise KeyError(name)
    return importlib.import_module(f"pipeline.stages.{name}")  # type: ignore[return-value]
