"""The shape of a Llama/Mistral decoder, and the one reader of a Hugging Face config.json.

One type for every view of a model's architecture: the plan counts its parameters and KV cache,
calibration checks an exported checkpoint against it and refuses shapes a format cannot
quantize, the reference runtime reads a TensorRT-LLM checkpoint into it
(`CheckpointConfig.arch`, with TensorRT-LLM's defaults), and the tiny model is
generated from one. Field names are Hugging Face's (MistralConfig, LlamaConfig).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError

HF_CONFIG = "config.json"
DEFAULT_ROPE_THETA = 10000.0  # what transformers uses when the config names none
# Each layer's linears by their Hugging Face names (a unified checkpoint's), and the TensorRT-LLM
# linear each is part of: q, k and v, in this order, are rows of attention.qkv.
HF_LINEARS: dict[str, str] = {
    "self_attn.q_proj": "attention.qkv",
    "self_attn.k_proj": "attention.qkv",
    "self_attn.v_proj": "attention.qkv",
    "self_attn.o_proj": "attention.dense",
    "mlp.gate_proj": "mlp.fc",
    "mlp.up_proj": "mlp.gate",
    "mlp.down_proj": "mlp.proj",
}


@dataclass(frozen=True)
class Architecture:
    """A decoder-only Llama/Mistral model: GQA attention with RoPE, RMSNorm, a gated (SwiGLU) MLP."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int  # the gated MLP's width
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # fewer than num_attention_heads: grouped-query attention
    head_dim: int
    max_position_embeddings: int | None  # None: a TensorRT-LLM checkpoint that names none
    rope_theta: float
    rms_norm_eps: float
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    # Where the figures came from (a config.json, a table), for messages and the plan's working.
    source: str = field(default="", compare=False)

    @property
    def linears(self) -> dict[str, tuple[int, int]]:
        """Each layer's linears by TensorRT-LLM's names, as (output, input) features."""
        h, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {
            "attention.qkv": (q + 2 * kv, h),
            "attention.dense": (h, q),
            "mlp.fc": (f, h),
            "mlp.gate": (f, h),
            "mlp.proj": (h, f),
        }

    @property
    def hf_linears(self) -> dict[str, tuple[int, int]]:
        """Each layer's linears by their Hugging Face names (HF_LINEARS), as (output, input) features."""
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        rows = {"self_attn.q_proj": q, "self_attn.k_proj": kv, "self_attn.v_proj": kv}
        return {
            name: (rows.get(name, self.linears[trt][0]), self.linears[trt][1])
            for name, trt in HF_LINEARS.items()
        }

    @property
    def linear_inputs(self) -> dict[str, int]:
        """Input features of the linears, by what sets them: what a per-group format's block must divide."""
        return {
            "hidden_size": self.hidden_size,
            "num_attention_heads x head_dim": self.num_attention_heads * self.head_dim,
            "intermediate_size": self.intermediate_size,
        }

    @property
    def linear_out_channels_per_layer(self) -> int:
        return sum(rows for rows, _ in self.linears.values())

    @property
    def linear_in_channels_per_layer(self) -> int:
        return sum(cols for _, cols in self.linears.values())

    @property
    def linear_params(self) -> int:
        return self.num_hidden_layers * sum(rows * cols for rows, cols in self.linears.values())

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def unquantized_params(self) -> int:
        """Embedding, lm_head (unless tied) and the RMSNorm weights (two per layer and a final one)."""
        lm_head = 0 if self.tie_word_embeddings else self.embedding_params
        return self.embedding_params + lm_head + (2 * self.num_hidden_layers + 1) * self.hidden_size

    @property
    def params(self) -> int:
        return self.linear_params + self.unquantized_params

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str | Path) -> Architecture:
        """From a Hugging Face config.json's contents (transformers 4 or 5); an InputError names a missing field."""

        def need(key: str) -> Any:
            if cfg.get(key) is None:
                raise InputError(f"Hugging Face config has no '{key}'", path=source)
            return cfg[key]

        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        # transformers 5 moves rope_theta into rope_parameters.
        rope_theta = cfg.get("rope_theta")
        if rope_theta is None:
            rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", DEFAULT_ROPE_THETA)
        return cls(
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            max_position_embeddings=int(need("max_position_embeddings")),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(need("rms_norm_eps")),
            sliding_window=cfg.get("sliding_window"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            source=str(source),
        )

    @classmethod
    def load(cls, model_dir: Path) -> Architecture:
        """From a Hugging Face model folder's config.json."""
        path = model_dir / HF_CONFIG
        try:
            return cls.from_hf_config(json.loads(path.read_text()), path)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read the Hugging Face config: {exc}", path=path) from None

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face config fields that give this shape (transformers 4 spelling): what
        `from_hf_config` reads back."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "sliding_window": self.sliding_window,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
        }


# Mistral 7B v0.3's config.json (mistralai/Mistral-7B-v0.3 and Mistral-7B-Instruct-v0.3 on the Hub).
_MISTRAL_7B_V03 = dict(
    vocab_size=32768,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-5,
    sliding_window=None,
    tie_word_embeddings=False,
)
# Architectures known before anything is downloaded: the plan of a hub model before `fetch`.
KNOWN_ARCHITECTURES: dict[str, Architecture] = {
    repo: Architecture(**_MISTRAL_7B_V03, source=f"built-in table ({repo})")
    for repo in ("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.3")
}
