"""Which ModelOpt configuration and TensorRT-LLM quant_algo each precision uses. Pure.

Mirrors TensorRT-LLM 1.2.1's quantize_by_modelopt: int8_sq is ModelOpt's
INT8_SMOOTHQUANT_CFG (alpha from the config); int8_wo runs no ModelOpt
quantization at all: the checkpoint keeps fp16 weights labelled W8A16 and
TensorRT-LLM quantizes them per channel when it builds. (A weight-only ModelOpt
config without calibration would export fp16 weights labelled
W8A8_SQ_PER_CHANNEL: the verifier checks dtypes against quant_algo for that.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pipeline.config import Precision

QUANT_ALGO = {
    Precision.fp16: None,
    Precision.bf16: None,
    Precision.int8_wo: "W8A16",
    Precision.int8_sq: "W8A8_SQ_PER_CHANNEL",
    Precision.fp8: "FP8",
}

# INT8 KV cache: ModelOpt 0.37 quantizes K and V inside the attention (its FP8_KV_CFG with 8 bits);
# the export then labels the checkpoint kv_cache_quant_algo INT8 and writes a per-layer scale.
INT8_KV_CACHE_CFG: dict[str, Any] = {
    "*[kv]_bmm_quantizer": {"num_bits": 8, "axis": None, "enable": True},
}

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


@dataclass(frozen=True)
class Recipe:
    precision: Precision
    quant_algo: str | None  # written into the checkpoint's config.json
    kv_cache_quant_algo: str | None
    modelopt_cfg: dict[str, Any] | None  # None: export the model as loaded, no calibration
    needs_gpu: bool

    @property
    def modelopt_quantizes_weights(self) -> bool:
        """False: ModelOpt leaves the weights alone and the export must be labelled by hand."""
        return self.precision in (Precision.int8_sq, Precision.fp8)

    @property
    def calibrates(self) -> bool:
        return self.modelopt_cfg is not None


def needs_calibration(precision: Precision, kv_cache_dtype: str) -> bool:
    """Whether the export depends on calibration data (activation or KV scales)."""
    return precision in (Precision.int8_sq, Precision.fp8) or kv_cache_dtype == "int8"


def recipe_for(precision: Precision, *, smoothquant_alpha: float, kv_cache_dtype: str) -> Recipe:
    """The recipe for a precision. Imports ModelOpt only when a preset is needed."""
    kv_int8 = kv_cache_dtype == "int8"
    cfg: dict[str, Any] | None
    if precision is Precision.int8_sq:
        import modelopt.torch.quantization as mtq

        cfg = copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG)
        cfg["algorithm"] = {"method": "smoothquant", "alpha": smoothquant_alpha}
    elif precision is Precision.fp8:
        import modelopt.torch.quantization as mtq

        cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    else:
        cfg = copy.deepcopy(DISABLED_CFG) if kv_int8 else None
    if kv_int8:
        assert cfg is not None
        cfg["quant_cfg"].update(copy.deepcopy(INT8_KV_CACHE_CFG))
    recipe = Recipe(
        precision=precision,
        quant_algo=QUANT_ALGO[precision],
        kv_cache_quant_algo="INT8" if kv_int8 else None,
        modelopt_cfg=cfg,
        needs_gpu=precision is Precision.fp8,
    )
    assert recipe.calibrates == needs_calibration(precision, kv_cache_dtype)
    return recipe


def export_dtype_name(precision: Precision) -> str:
    """Dtype of the unquantized tensors in the checkpoint."""
    return "bfloat16" if precision is Precision.bf16 else "float16"
