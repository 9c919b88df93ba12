"""The kinds of linear layer a TensorRT-LLM checkpoint can hold, built from its tensors.

Semantics follow TensorRT-LLM 1.2.x (tensorrt_llm/quantization/layers.py,
quantize.py, functional.py, models/convert_utils.py, models/modeling_utils.py,
and cutlass_preprocessors.cpp):

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
- W4A16_AWQ (WeightOnlyGroupwiseQuantLinear): ModelOpt 0.37 packs two signed int4
  values per int8 byte along the output dimension ([out/2, in]: low nibble =
  output row 2j, high nibble = row 2j+1, pack_int4_in_uint8); TensorRT-LLM
  transposes it to [in, out/2] and reads it as quint4x2, the same pairing
  (modeling_utils.py preprocess_perlayer_weights @ 27712aa7). The group scales
  [out, in/128] are cast to the model dtype; y = (x * pre_quant_scale) W^T with
  W[o, i] = q[o, i] * scale[o, i // 128] and no zero point (functional.py
  weight_only_groupwise_quant_matmul's non-plugin path: repeat_interleave the
  scales over each group of inputs, pre-quant multiply, matmul).
- FP8 (FP8Linear): float8_e4m3fn weights with one scale per tensor; the input is
  quantized per tensor, q = fp8(clip(x / s_a, -448, 448)) (round to nearest even,
  saturated), y = (q W_q^T) * s_a * s_w.

Everything computes in float32. The int8 products are exact integers there; a
dot product only rounds once it passes 2^24 (K > ~1000), a relative error of
~6e-8, far below the fp16 output rounding of an engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT8_MIN, INT8_MAX = -128.0, 127.0
FP8_E4M3_MAX = 448.0


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


def round_to_fp8(x: torch.Tensor) -> torch.Tensor:
    """The nearest float8_e4m3fn value (half to even), saturated at +-448, kept as float32."""
    return x.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """ModelOpt's packed int4 [out/2, in] (int8 bytes) -> the signed values [out, in] as float32."""
    byte = packed.to(torch.int16) & 0xFF
    low = ((byte & 0x0F) ^ 8) - 8  # sign-extend a 4-bit two's complement value
    high = (((byte >> 4) & 0x0F) ^ 8) - 8
    rows, cols = packed.shape
    return torch.stack([low, high], dim=1).reshape(rows * 2, cols).float()


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


@dataclass
class GroupwiseLinear(Linear):
    """W4A16 AWQ: int4 weights with one scale per group of inputs, and a pre-quant scale on the input."""

    qweight: torch.Tensor  # [out, in] the int4 values, unpacked (float32)
    group_scale: torch.Tensor  # [out, in / group_size], already in the model dtype
    prequant_scale: torch.Tensor  # [in]
    group_size: int
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        scale = self.group_scale.float().repeat_interleave(self.group_size, dim=1)
        self._dequantized = self.qweight * scale
        self._prequant = self.prequant_scale.float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x * self._prequant, self._dequantized, self.bias)


@dataclass
class Fp8Linear(Linear):
    """W8A8 FP8: per-tensor weight and activation scales."""

    qweight: torch.Tensor  # [out, in] float8_e4m3fn
    weight_scale: torch.Tensor  # [1] float32
    activation_scale: torch.Tensor  # [1] float32
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self._qweight = self.qweight.float()
        self._act_scale = self.activation_scale.float().reshape(())
        self._out_scale = self._act_scale * self.weight_scale.float().reshape(())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q = round_to_fp8(x / self._act_scale)
        y = torch.nn.functional.linear(q, self._qweight) * self._out_scale
        return y if self.bias is None else y + self.bias
