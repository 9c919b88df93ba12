"""Read a TensorRT-LLM checkpoint (config.json + rank0.safetensors) the way TensorRT-LLM 1.2.1 does.

Defaults are TensorRT-LLM's, not Hugging Face's: a key missing from config.json
takes the value `LLaMAConfig`/`PretrainedConfig` would give it (rotary_base
10000.0, norm_epsilon 1e-5, head_size hidden/heads...), so a checkpoint that
dropped a key behaves here as it would in an engine. Features this runtime
does not implement are refused, never ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.core.errors import InputError
from pipeline.facts.architecture import Architecture
from pipeline.facts.formats import FORMATS, KV_CACHE_FORMATS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "rank0.safetensors"
# TensorRT-LLM's MODEL_MAP sends both to its LLaMAForCausalLM.
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
# quantize_layers' list when a checkpoint gives no exclude_modules.
DEFAULT_EXCLUDE_MODULES = (
    "*lm_head",
    "*router",
    "*vocab_embedding",
    "*position_embedding",
    "*block_embedding",
    "*shared_expert_gate",
)


# The runtime runs every format of the table (each quant_algo has a kernel in runtime.weights).
QUANT_ALGOS = tuple(f.quant_algo for f in FORMATS.values() if f.quant_algo is not None)
KV_CACHE_QUANT_ALGOS = tuple(k.quant_algo for k in KV_CACHE_FORMATS.values() if k.quant_algo is not None)


class QuantizationConfig(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    group_size: int = 128  # QuantConfig's default (per-group formats)
    exclude_modules: tuple[str, ...] | None = None

    @field_validator("quant_algo", "kv_cache_quant_algo")
    @classmethod
    def _known_algo(cls, value: str | None, info: ValidationInfo) -> str | None:
        known = QUANT_ALGOS if info.field_name == "quant_algo" else KV_CACHE_QUANT_ALGOS
        if value is not None and value not in known:
            raise ValueError(f"the reference runtime supports {', '.join(known)} or null, not {value!r}")
        return value

    @property
    def excluded_patterns(self) -> tuple[str, ...]:
        return DEFAULT_EXCLUDE_MODULES if self.exclude_modules is None else self.exclude_modules


class Mapping(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    world_size: int = 1
    tp_size: int = 1
    pp_size: int = 1


# The vocabulary the tokenizer knows, when an export padded vocab_size (pipeline.facts.formats'
# pads_vocab_to): written by calibration's check, read by every runtime of the engine.
UNPADDED_VOCAB = "vocab_size_unpadded"


def real_vocab_size(pretrained_config: dict[str, Any]) -> int:
    """The vocabulary of a checkpoint (or engine's pretrained_config) without its padding rows."""
    return int(pretrained_config.get(UNPADDED_VOCAB) or pretrained_config["vocab_size"])


class CheckpointConfig(BaseModel):
    """The fields of a TensorRT-LLM Llama-family checkpoint config this runtime reads: TensorRT-LLM's
    names and defaults as the file holds them. The model's shape is `arch`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    architecture: str
    dtype: str
    num_hidden_layers: int
    num_attention_heads: int
    hidden_size: int
    vocab_size: int  # rows of vocab_embedding and lm_head (padded by an AWQ export)
    vocab_size_unpadded: int | None = None  # UNPADDED_VOCAB: the real size, when padded
    num_key_value_heads: int | None = None  # None: num_attention_heads (no GQA)
    head_size: int | None = None  # None: hidden_size // num_attention_heads
    intermediate_size: int | None = None  # None: 4 * hidden_size
    hidden_act: str = "gelu"
    norm_epsilon: float = 1e-5
    position_embedding_type: str = "learned_absolute"
    rotary_base: float = 10000.0  # LLaMAConfig's default: a dropped rope_theta lands here
    rotary_scaling: dict[str, Any] | None = None
    rotary_pct: float = 1.0
    max_position_embeddings: int | None = None
    sliding_window: int | None = None  # written by calibration's check, from the Hugging Face config
    share_embedding_table: bool = False
    mapping: Mapping = Mapping()
    quantization: QuantizationConfig = QuantizationConfig()

    @model_validator(mode="after")
    def _supported(self) -> CheckpointConfig:
        problems = {
            "architecture": (self.architecture in ARCHITECTURES, f"one of {', '.join(ARCHITECTURES)}"),
            "dtype": (self.dtype in ("float16", "bfloat16", "float32"), "float16, bfloat16 or float32"),
            "hidden_act": (self.hidden_act == "silu", "silu (Llama/Mistral gated MLP)"),
            "position_embedding_type": (self.position_embedding_type == "rope_gpt_neox", "rope_gpt_neox"),
            "rotary_scaling": (self.rotary_scaling is None, "null (rope scaling is not implemented)"),
            "rotary_pct": (self.rotary_pct == 1.0, "1.0 (partial rotary is not implemented)"),
            "mapping": (
                self.mapping.world_size == self.mapping.tp_size == self.mapping.pp_size == 1,
                "a single rank (tp_size = pp_size = 1)",
            ),
        }
        for field, (ok, expected) in problems.items():
            if not ok:
                raise ValueError(f"{field}: the reference runtime supports {expected}")
        if self.num_attention_heads % self.arch.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self

    @property
    def arch(self) -> Architecture:
        """The model's shape, a field the file leaves out taking TensorRT-LLM's default."""
        return Architecture(
            vocab_size=self.vocab_size_unpadded or self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size or 4 * self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads or self.num_attention_heads,
            head_dim=self.head_size or self.hidden_size // self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rotary_base,
            rms_norm_eps=self.norm_epsilon,
            sliding_window=self.sliding_window,
            tie_word_embeddings=self.share_embedding_table,
            source="TensorRT-LLM checkpoint config",
        )

    @property
    def quant_algo(self) -> str | None:
        return self.quantization.quant_algo


def read_checkpoint_config(checkpoint_dir: Path) -> CheckpointConfig:
    path = checkpoint_dir / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            "no TensorRT-LLM checkpoint config here",
            path=path,
            hint="point at a calibrate checkpoint/ folder",
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", path=path) from None
    return parse_checkpoint_config(data, path)


def parse_checkpoint_config(data: Any, path: Path, *, field_prefix: str = "") -> CheckpointConfig:
    """Validate a checkpoint config (or an engine's pretrained_config, with field_prefix
    "pretrained_config."); an InputError names the file and the field."""
    try:
        return CheckpointConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = field_prefix + ".".join(str(p) for p in err["loc"])
        problem = err["msg"].removeprefix("Value error, ")
        raise InputError(f"{field}: {problem}" if field else problem, path=path) from None


def load_tensors(checkpoint_dir: Path) -> dict[str, Any]:
    """rank0.safetensors as a dict of torch tensors (safetensors only: no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = checkpoint_dir / WEIGHTS_NAME
    if not path.is_file():
        raise InputError(
            "weights file missing", path=path, hint="a checkpoint needs config.json and rank0.safetensors"
        )
    try:
        return load_file(path)
    except SafetensorError as exc:
        raise InputError(f"unreadable safetensors file: {exc}", path=path) from None
