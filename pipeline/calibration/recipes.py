"""Which ModelOpt configuration and TensorRT-LLM quant_algo each precision uses. Pure.

The preset, quant_algo and KV cache settings come from the format's row in
pipeline.facts.formats. Mirrors TensorRT-LLM 1.2.1's quantize_by_modelopt: int8_sq is
ModelOpt's INT8_SMOOTHQUANT_CFG (alpha from the config); int4_awq is
INT4_AWQ_CFG (group size 128); fp8 is FP8_DEFAULT_CFG with its FP8 KV cache;
int8_wo runs no ModelOpt quantization at all: the checkpoint keeps fp16 weights
labelled W8A16 and TensorRT-LLM quantizes them per channel when it builds. (A
weight-only ModelOpt config without calibration would export fp16 weights
labelled W8A8_SQ_PER_CHANNEL: the verifier checks dtypes against quant_algo.)

For the unified Hugging Face checkpoint (the PyTorch backend's) nothing quantizes int8_wo later: the
PyTorch backend loads W8A16 weights already INT8 (_torch/modules/linear.py,
WeightOnlyQuantLinearMethod: an int8 `weight` and a per-channel `weight_scale`). So ModelOpt quantizes
them (INT8_WEIGHT_ONLY_CFG: 8-bit weights per output channel, no activation quantizer, no data), and
the export, which ModelOpt 0.37 labels W8A8_SQ_PER_CHANNEL (export/quant_utils.py
get_quantization_format: any 8-bit weight quantizer is int8_sq), is relabelled W8A16.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pipeline.facts.formats import (
    KvCacheFormat,
    Precision,
    WeightFormat,
    kv_cache_format,
    reads_calibration_data,
    weight_format,
)
from pipeline.facts.layout import CheckpointKind

# Every quantizer off: the base for precisions whose weights ModelOpt must not touch.
DISABLED_CFG: dict[str, Any] = {
    "quant_cfg": {
        "*weight_quantizer": {"enable": False},
        "*input_quantizer": {"enable": False},
        "*lm_head*": {"enable": False},
        "default": {"enable": False},
    },
    "algorithm": "max",
}


# INT8 weights per output channel (max calibration of the weights alone: ModelOpt's max_calibrate
# quantizes the weights when it is given no forward loop), activations left in floating point.
INT8_WEIGHT_ONLY_CFG: dict[str, Any] = {
    "quant_cfg": {
        "*weight_quantizer": {"num_bits": 8, "axis": 0},
        "*input_quantizer": {"enable": False},
        "*lm_head*": {"enable": False},
        "default": {"enable": False},
    },
    "algorithm": "max",
}


def kv_cache_quant_cfg(kv: KvCacheFormat) -> dict[str, Any]:
    """ModelOpt 0.37 quantizes K and V inside the attention ("*[kv]_bmm_quantizer", as its
    FP8_KV_CFG does); the export then labels kv_cache_quant_algo and writes per-layer scales."""
    return {"*[kv]_bmm_quantizer": {"num_bits": kv.modelopt_num_bits, "axis": None, "enable": True}}


@dataclass(frozen=True)
class Recipe:
    format: WeightFormat
    kv_cache: KvCacheFormat
    modelopt_cfg: dict[str, Any] | None  # None: export the model as loaded, no calibration
    checkpoint: CheckpointKind = "tensorrt-llm"

    @property
    def precision(self) -> Precision:
        return self.format.precision

    @property
    def quant_algo(self) -> str | None:  # written into the checkpoint's config.json
        return self.format.quant_algo

    @property
    def kv_cache_quant_algo(self) -> str | None:
        return self.kv_cache.quant_algo

    @property
    def weights_quantized_by(self) -> str:
        """Who quantizes the weights: the format's answer, except that no build quantizes a unified
        checkpoint's (see the module doc)."""
        by = self.format.weights_quantized_by
        return "modelopt" if by == "trtllm-build" and self.checkpoint == "hf-unified" else by

    @property
    def modelopt_quantizes_weights(self) -> bool:
        """False: ModelOpt leaves the weights alone and the export must be labelled by hand."""
        return self.weights_quantized_by == "modelopt"

    @property
    def quantizes(self) -> bool:
        """Whether ModelOpt quantizes the model at all (its config runs)."""
        return self.modelopt_cfg is not None

    @property
    def calibrates(self) -> bool:
        """Whether that reads calibration data (weight-only INT8 reads none)."""
        return reads_calibration_data(self.format.precision, self.kv_cache.name)


def recipe_for(
    precision: Precision | str,
    *,
    smoothquant_alpha: float,
    kv_cache_dtype: str,
    checkpoint: CheckpointKind = "tensorrt-llm",
) -> Recipe:
    """The recipe for a precision and the checkpoint it is exported as. Imports ModelOpt only when a
    preset is needed."""
    fmt, kv = weight_format(precision), kv_cache_format(precision, kv_cache_dtype)
    cfg: dict[str, Any] | None = None
    if checkpoint == "hf-unified" and fmt.weights_quantized_by == "trtllm-build":
        cfg = copy.deepcopy(INT8_WEIGHT_ONLY_CFG)
    elif fmt.modelopt_config is not None:
        import modelopt.torch.quantization as mtq

        cfg = copy.deepcopy(getattr(mtq, fmt.modelopt_config))
        if fmt.precision is Precision.int8_sq:
            cfg["algorithm"] = {"method": "smoothquant", "alpha": smoothquant_alpha}
    elif kv.quant_algo is not None:
        cfg = copy.deepcopy(DISABLED_CFG)
    if kv.quant_algo is not None:
        assert cfg is not None
        cfg["quant_cfg"].update(kv_cache_quant_cfg(kv))
    return Recipe(format=fmt, kv_cache=kv, modelopt_cfg=cfg, checkpoint=checkpoint)
