"""Checkpoints of the tiny model (TensorRT-LLM's, and ModelOpt's unified Hugging Face one), made by the
pipeline's own export (shared by tests).

Each precision is exported once per test session into a temp folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pipeline.facts.config import CalibrationSection

TINY_CALIBRATION = CalibrationSection(samples=64, seq_len=128, batch_size=8)
# AWQ's scale search runs a forward per candidate scale: a quarter of the data keeps it to seconds.
SMALL_CALIBRATION = {"int4_awq": {"samples": 16, "seq_len": 64}}
_EXPORTED: dict[tuple[Path, str, str, str], Path] = {}


def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Path,
    precision: str,
    *,
    kv_cache_dtype: str = "fp16",
    forward: Any = None,
    checkpoint: str = "tensorrt-llm",
) -> Path:
    """The checkpoint/ folder for `precision` (any row of pipeline.facts.formats), exported with export_checkpoint.

    `forward` (ModelOpt's calibration call) lets a test keep a handle on the calibrated model;
    passing one always exports afresh.
    """
    from pipeline.calibration import export_checkpoint
    from pipeline.core.reporter import RecordingReporter

    key = (model_dir, precision, kv_cache_dtype, checkpoint)
    if forward is None and key in _EXPORTED:
        return _EXPORTED[key]
    out = tmp_path_factory.mktemp(f"{checkpoint}-{precision}-kv{kv_cache_dtype}")
    extra = {} if forward is None else {"forward": forward}
    export_checkpoint(
        model_dir,
        precision,
        TINY_CALIBRATION.model_copy(
            update={
                "dataset": _repo_root() / "calib_data" / "offline-mix.jsonl",
                **SMALL_CALIBRATION.get(precision, {}),
            }
        ),
        out,
        reporter=RecordingReporter(),
        log=logging.getLogger("tests.tiny_checkpoints"),
        kv_cache_dtype=kv_cache_dtype,
        checkpoint=checkpoint,
        **extra,
    )
    if forward is None:
        _EXPORTED[key] = out
    return out


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
