"""The KV cache of the reference runtime, with TensorRT-LLM 1.2.x's quantized caches.

A quantized cache stores each key and value (after RoPE) as x / s in the cache
dtype, s the layer's kv_cache_scaling_factor (the attention plugin multiplies by
its reciprocal, kv_cache_rcp_scaling_factor, to write and by s to read):
- INT8: round to nearest even, saturated to [-128, 127];
- FP8: the nearest float8_e4m3fn, saturated at +-448.
What the attention reads back depends on the engine: with an INT8 cache
trtllm-build turns paged context FMHA off (builder.py @ 008b2b8d), so the
context phase attends over the unquantized K/V of the prompt and only later
steps read the cache; with an FP8 cache and the fp8 precision, paged context
FMHA stays on and the context phase reads the cache too. The current step's
own key and value reach attention unquantized in either case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.runtime.linear import INT8_MAX, INT8_MIN, round_to_fp8


def _int8_round_trip(x: torch.Tensor, scale: float) -> torch.Tensor:
    rcp = 1.0 / scale
    return torch.round(x * rcp).clamp(INT8_MIN, INT8_MAX) * scale


def _fp8_round_trip(x: torch.Tensor, scale: float) -> torch.Tensor:
    return round_to_fp8(x * (1.0 / scale)) * scale


@dataclass(frozen=True)
class KvCodec:
    round_trip: Callable[[torch.Tensor, float], torch.Tensor]  # what the cache gives back for x
    context_reads_cache: bool  # the context phase attends over cached (quantized) K/V


# kv_cache_quant_algo -> its codec: the runtime kernel of each quantized KV cache format.
KV_CODECS: dict[str, KvCodec] = {
    "INT8": KvCodec(_int8_round_trip, context_reads_cache=False),
    "FP8": KvCodec(_fp8_round_trip, context_reads_cache=True),
}


@dataclass
class KVCache:
    """Keys and values per layer, [batch, kv_heads, positions, head_dim], grown one step at a time."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    codec: KvCodec | None = None
    scales: tuple[float | None, ...] = ()

    @classmethod
    def empty(
        cls, layers: int, codec: KvCodec | None = None, scales: tuple[float | None, ...] = ()
    ) -> KVCache:
        return cls(
            keys=[torch.empty(0)] * layers, values=[torch.empty(0)] * layers, codec=codec, scales=scales
        )

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values; return the K and V attention sees (cached past + new)."""
        past_k, past_v = self.keys[layer], self.values[layer]
        stored_k, stored_v = k, v
        if self.codec is not None:
            scale = self.scales[layer]
            assert scale is not None
            stored_k, stored_v = self.codec.round_trip(k, scale), self.codec.round_trip(v, scale)
            if self.codec.context_reads_cache and not past_k.numel():
                k, v = stored_k, stored_v
        if past_k.numel():
            stored_k, stored_v = torch.cat([past_k, stored_k], dim=2), torch.cat([past_v, stored_v], dim=2)
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        self.keys[layer], self.values[layer] = stored_k, stored_v
        return k, v
