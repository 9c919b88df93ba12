"""What a calibration run records in its manifest (typed, JSON-able)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class DatasetRef(BaseModel):
    path: str
    sha256: str
    records: int  # lines in the file
    origin: str | None  # from the manifest; None for a user's file without one


class LayerActivationRange(BaseModel):
    """Input ranges (absolute max per linear, from the quantizers' amax) of one decoder layer."""

    layer: int
    linears: int
    input_amax_min: float  # smallest per-linear input amax before smoothing
    input_amax_max: float
    input_amax_mean: float
    quantized_amax_max: float  # largest per-tensor amax the INT8 activations are scaled by (after smoothing)


class Repair(BaseModel):
    """A field of the exported config.json that the verifier set from the Hugging Face config."""

    field: str
    found: Any
    fixed: Any
    reason: str


class BatchBackoff(BaseModel):
    at_sample: int
    from_batch: int
    to_batch: int


class CalibrationRun(BaseModel):
    """What the calibration saw and how it went (absent when the precision needs none)."""

    dataset: DatasetRef
    samples: int  # sequences forwarded through the model
    tokens: int
    seq_len: int
    batch_size: int  # requested
    final_batch_size: int  # after out-of-memory back-off
    backoffs: list[BatchBackoff]
    smoothquant_alpha: float | None
    instruct_template: bool  # the tokenizer's chat template was applied to each sample
    activation_ranges: list[LayerActivationRange]


class CalibrationRecord(BaseModel):
    precision: str
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    export_dtype: str
    device: str
    load_dtype: str
    versions: dict[str, str]  # nvidia-modelopt, torch, transformers
    calibration: CalibrationRun | None  # None: weight-only / unquantized, nothing to calibrate
    load_s: float
    calibration_s: float
    export_s: float
    repairs: list[Repair]
    tensors: int  # in rank0.safetensors
