"""Calibration and export: a Hugging Face model -> a verified TensorRT-LLM checkpoint.

Modules: data (texts -> token samples), loop (batched forward loop with
out-of-memory back-off), recipes (precision -> ModelOpt config, quant_algo),
ranges (per-layer activation summary), verify (checkpoint vs Hugging Face
config), export (the orchestration). torch/ModelOpt are imported lazily.
"""

from pipeline.calibration.export import export_checkpoint
from pipeline.calibration.records import CalibrationRecord

__all__ = ["CalibrationRecord", "export_checkpoint"]
