"""The three kinds of linear layer a TensorRT-LLM checkpoint can hold, built from its tensors.

Semantics follow TensorRT-LLM 1.2.1 (tensorrt_llm/quantization/layers.py,
quantize.py, models/convert_utils.py, and cutlass_preprocessors.cpp):

- plain: y = x W^T (+ b).
- W8A16 (WeightOnlyQuantLinear): int8 weights times a per-output-channel scale;
  activations stay in floating point. A checkpoint with floating-point
  weights is quantized on load exactly as the engine builder does it:
  scale = amax / 128 per output channel (stored in the model dtype),
  q = clip(round_half_away(w / scale), -128, 127).
- W8A8_SQ_PER_CHANNEL (Int8SmoothQuantLinear, the non-plugin path this algo
  takes): x' = x * prequant_scaling_factor, q = clip(round_half_even(x' / s_a),
  -128, 127) with one activation scale s_a per tensor, y = (q W_q^T) * s_a * s_w
  with s_w per output channel.

Everything computes in float32. The int8 products are exact integers there; a
dot product only rounds once it passes 2^24 (K > ~1000), a relative error of
~6e-8, far below the fp16 output rounding of an engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT8_MIN, INT8_MAX = -128.0, 127.0


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's round(): what TensorRT-LLM's weight quantizer uses (torch.round rounds half to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def quantize_weight_per_channel(
    weight: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """TensorRT-LLM's symmetric per-channel int8 quantization of a [out, in] weight.

    Returns (int8 weight [out, in], scale [out] in `dtype`).
    """
    w = weight.float()
    scale = w.abs().amax(dim=1) * (1.0 / 128.0)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.where(scale[:, None] == 0, torch.zeros_like(w), round_half_away(w / safe[:, None]))
    return q.clamp(INT8_MIN, INT8_MAX).to(torch.int8), scale.to(dtype)


def quantize_per_tensor(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """TensorRT's int8 Q layer: round half to even of x / scale, saturated (values kept as float)."""
    return torch.round(x / scale).clamp(INT8_MIN, INT8_MAX)


class Linear:
    """y = x W^T (+ b); quantized kinds fold their dequantization into what forward does."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class DenseLinear(Linear):
    weight: torch.Tensor  # [out, in] float32
    bias: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


@dataclass
class WeightOnlyLinear(Linear):
    """W8A16: the weight is dequantized once (int8 x per-channel scale); activations are not quantized."""

    qweight: torch.Tensor  # [out, in] int8
    scale: torch.Tensor  # [out]
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self._dequantized = self.qweight.float() * self.scale.float()[:, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self._dequantized, self.bias)


@dataclass
class SmoothQuantLinear(Linear):
    """W8A8 SmoothQuant, per-channel weight scales, one static activation scale per tensor."""

    qweight: torch.Tensor  # [out, in] int8, already divided by the smoothing factor before quantization
    weight_scale: torch.Tensor  # [out] float32
    activation_scale: torch.Tensor  # [1] float32: amax / 127 of the smoothed input
    prequant_scale: torch.Tensor | None = None  # [in]: x' = x * prequant_scale
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self._qweight = self.qweight.float()
        self._out_scale = self.activation_scale.float().reshape(()) * self.weight_scale.float()
        self._prequant = None if self.prequant_scale is None else self.prequant_scale.float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._prequant is not None:
            x = x * self._prequant
        q = quantize_per_tensor(x, self.activation_scale.float())
        y = torch.nn.functional.linear(q, self._qweight) * self._out_scale
        return y if self.bias is None else y + self.bias
