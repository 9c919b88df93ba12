"""TensorRT-LLM checkpoints of the tiny model, made by the pipeline's own export (shared by tests).

Each precision is exported once per test session into a temp folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import CalibrationSection

TINY_CALIBRATION = CalibrationSection(samples=64, seq_len=128, batch_size=8)
_EXPORTED: dict[tuple[Path, str], Path] = {}


def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, precision: str, *, forward: Any = None
) -> Path:
    """The checkpoint/ folder for `precision` (fp16, int8_wo, int8_sq), exported with export_checkpoint.

    `forward` (ModelOpt's calibration call) lets a test keep a handle on the calibrated model;
    passing one always exports afresh.
    """
    from pipeline.calibration import export_checkpoint
    from pipeline.reporting import RecordingReporter

    key = (model_dir, precision)
    if forward is None and key in _EXPORTED:
        return _EXPORTED[key]
    out = tmp_path_factory.mktemp(f"checkpoint-{precision}")
    extra = {} if forward is None else {"forward": forward}
    export_checkpoint(
        model_dir,
        precision,
        TINY_CALIBRATION.model_copy(update={"dataset": _repo_root() / "calib_data" / "offline-mix.jsonl"}),
        out,
        reporter=RecordingReporter(),
        log=logging.getLogger("tests.tiny_checkpoints"),
        **extra,
    )
    if forward is None:
        _EXPORTED[key] = out
    return out


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
