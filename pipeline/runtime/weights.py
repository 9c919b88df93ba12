"""Turn a checkpoint's tensors into the runtime's layers, checking every name, shape and dtype.

Which linear kind a module gets follows TensorRT-LLM 1.2.1's quantize_layers:
the checkpoint's quant_algo applies to every linear layer except those that
match an exclude_modules pattern (fnmatch on the module's dotted name).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.errors import InputError
from pipeline.runtime.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointConfig
from pipeline.runtime.linear import (
    DenseLinear,
    Fp8Linear,
    GroupwiseLinear,
    Linear,
    SmoothQuantLinear,
    WeightOnlyLinear,
    quantize_weight_per_channel,
    unpack_int4,
)

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class DecoderLayer:
    input_norm: torch.Tensor
    qkv: Linear
    dense: Linear
    post_norm: torch.Tensor
    fc: Linear  # Hugging Face gate_proj: the activation applies to its output
    gate: Linear  # Hugging Face up_proj
    proj: Linear  # Hugging Face down_proj
    # The K/V cache scale (kv_cache_scaling_factor; None: the cache is not quantized).
    kv_cache_scale: float | None = None


@dataclass
class ModelWeights:
    embedding: torch.Tensor  # [vocab, hidden]
    layers: list[DecoderLayer]
    final_norm: torch.Tensor
    lm_head: Linear


class _TensorReader:
    """Takes tensors out of the checkpoint by name, with errors that name the tensor and the file."""

    def __init__(self, tensors: dict[str, torch.Tensor], config: CheckpointConfig, path: Path) -> None:
        self.tensors = tensors
        self.config = config
        self.path = path
        self.dtype = TORCH_DTYPES[config.dtype]

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        tensor = self.tensors.pop(name, None)
        if tensor is None:
            raise InputError(f"tensor '{name}' is missing", path=self.path)
        if shape is not None and tuple(tensor.shape) != shape:
            raise InputError(
                f"tensor '{name}' has shape {tuple(tensor.shape)}, expected {shape}", path=self.path
            )
        return tensor

    def optional(self, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        return self.take(name, shape) if name in self.tensors else None

    def floating(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = self.take(name, shape)
        if not tensor.is_floating_point():
            raise InputError(
                f"tensor '{name}' is {tensor.dtype}, expected a floating-point tensor", path=self.path
            )
        return tensor.float()

    def is_excluded(self, module: str) -> bool:
        return any(fnmatch.fnmatchcase(module, p) for p in self.config.quantization.excluded_patterns)

    def linear(self, module: str, out_features: int, in_features: int) -> Linear:
        algo = None if self.is_excluded(module) else self.config.quant_algo
        bias = self.optional(f"{module}.bias", (out_features,))
        bias = None if bias is None else bias.float()
        if algo is None:
            weight = self.take(f"{module}.weight", (out_features, in_features))
            if not weight.is_floating_point():
                raise InputError(
                    f"tensor '{module}.weight' is {weight.dtype} but the module is not quantized "
                    f"(quant_algo {self.config.quant_algo}, "
                    f"exclude_modules {list(self.config.quantization.excluded_patterns)})",
                    path=self.path,
                )
            return DenseLinear(weight.float(), bias)
        return KERNELS[algo](self, module, out_features, in_features, bias)

    def optional_float(self, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        return self.floating(name, shape) if name in self.tensors else None

    def quantized_weight(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        return self.require_dtype(name, self.take(name, shape), dtype)

    def require_dtype(self, name: str, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if weight.dtype != dtype:
            raise InputError(
                f"tensor '{name}' is {weight.dtype}, but quant_algo {self.config.quant_algo} needs {dtype} "
                "weights (a mislabelled export?)",
                path=self.path,
            )
        return weight

    def kv_cache_scale(self, attention: str) -> float | None:
        """The layer's K/V scale as TensorRT-LLM 1.2.x loads it (modeling_utils.py
        process_kv_scaling_factor @ 27712aa7): separate k and v scales become one,
        kv_cache_scaling_factor = max(k, v); the cache stores x / scale."""
        if self.config.quantization.kv_cache_quant_algo is None:
            return None
        k = self.optional_float(f"{attention}.k_cache_scaling_factor", (1,))
        v = self.optional_float(f"{attention}.v_cache_scaling_factor", (1,))
        if (k is None) != (v is None):
            raise InputError(f"'{attention}' has only one of k_cache/v_cache_scaling_factor", path=self.path)
        if k is not None and v is not None:
            self.tensors.pop(f"{attention}.kv_cache_scaling_factor", None)
            scale = torch.maximum(k, v)
        else:
            scale = self.floating(f"{attention}.kv_cache_scaling_factor", (1,))
        if not float(scale) > 0:
            raise InputError(f"'{attention}' has a KV cache scale of {float(scale)}", path=self.path)
        return float(scale)


# quant_algo -> how its linear is read (TensorRT-LLM 1.2.x semantics: see runtime.linear).
Kernel = Callable[[_TensorReader, str, int, int, "torch.Tensor | None"], Linear]


def _w8a16(r: _TensorReader, module: str, rows: int, cols: int, bias: torch.Tensor | None) -> Linear:
    weight = r.take(f"{module}.weight", (rows, cols))
    if weight.is_floating_point():
        # TensorRT-LLM quantizes floating-point W8A16 weights when it loads them to build.
        qweight, scale = quantize_weight_per_channel(weight, r.dtype)
    else:
        qweight = r.require_dtype(f"{module}.weight", weight, torch.int8)
        scale = r.floating(f"{module}.weights_scaling_factor", (rows,))
    return WeightOnlyLinear(qweight, scale, bias)


def _w8a8_sq(r: _TensorReader, module: str, rows: int, cols: int, bias: torch.Tensor | None) -> Linear:
    return SmoothQuantLinear(
        qweight=r.quantized_weight(f"{module}.weight", torch.int8, (rows, cols)),
        weight_scale=r.floating(f"{module}.weights_scaling_factor", (rows,)),
        activation_scale=r.floating(f"{module}.activation_scaling_factor", (1,)),
        prequant_scale=r.optional_float(f"{module}.prequant_scaling_factor", (cols,)),
        bias=bias,
    )


def _w4a16_awq(r: _TensorReader, module: str, rows: int, cols: int, bias: torch.Tensor | None) -> Linear:
    group = r.config.quantization.group_size
    if rows % 2 or cols % group:
        raise InputError(
            f"'{module}' is [{rows}, {cols}]: W4A16_AWQ needs an even output size and inputs in groups of {group}",
            path=r.path,
        )
    packed = r.quantized_weight(f"{module}.weight", torch.int8, (rows // 2, cols))
    # TensorRT-LLM casts the group scales to the model dtype before building.
    scale = r.floating(f"{module}.weights_scaling_factor", (rows, cols // group)).to(r.dtype)
    prequant = r.floating(f"{module}.prequant_scaling_factor", (cols,))
    return GroupwiseLinear(unpack_int4(packed), scale, prequant, group, bias)


def _fp8(r: _TensorReader, module: str, rows: int, cols: int, bias: torch.Tensor | None) -> Linear:
    return Fp8Linear(
        qweight=r.quantized_weight(f"{module}.weight", torch.float8_e4m3fn, (rows, cols)),
        weight_scale=r.floating(f"{module}.weights_scaling_factor", (1,)),
        activation_scale=r.floating(f"{module}.activation_scaling_factor", (1,)),
        bias=bias,
    )


KERNELS: dict[str, Kernel] = {
    "W8A16": _w8a16,
    "W8A8_SQ_PER_CHANNEL": _w8a8_sq,
    "W4A16_AWQ": _w4a16_awq,
    "FP8": _fp8,
}


def build_weights(
    tensors: dict[str, torch.Tensor], config: CheckpointConfig, checkpoint_dir: Path
) -> ModelWeights:
    reader = _TensorReader(dict(tensors), config, checkpoint_dir / WEIGHTS_NAME)
    arch = config.arch
    hidden, linears = arch.hidden_size, arch.linears
    layers = []
    for i in range(arch.num_hidden_layers):
        p = f"transformer.layers.{i}"
        layers.append(
            DecoderLayer(
                input_norm=reader.floating(f"{p}.input_layernorm.weight", (hidden,)),
                qkv=reader.linear(f"{p}.attention.qkv", *linears["attention.qkv"]),
                dense=reader.linear(f"{p}.attention.dense", *linears["attention.dense"]),
                post_norm=reader.floating(f"{p}.post_layernorm.weight", (hidden,)),
                fc=reader.linear(f"{p}.mlp.fc", *linears["mlp.fc"]),
                gate=reader.linear(f"{p}.mlp.gate", *linears["mlp.gate"]),
                proj=reader.linear(f"{p}.mlp.proj", *linears["mlp.proj"]),
                kv_cache_scale=reader.kv_cache_scale(f"{p}.attention"),
            )
        )
    if config.quant_algo == "W8A16" and not reader.is_excluded("transformer.vocab_embedding"):
        raise InputError(
            "quantization.exclude_modules leaves transformer.vocab_embedding quantized: TensorRT-LLM would build "
            "an int8 embedding, which the reference runtime does not implement",
            path=checkpoint_dir / CONFIG_NAME,
            hint="add '*vocab_embedding' to exclude_modules (TensorRT-LLM's default list has it)",
        )
    # The rows past the real vocabulary are an export's zero padding (checked at export): the runtime
    # keeps the real ones, so its logits have the tokenizer's width.
    rows, vocab = config.vocab_size, arch.vocab_size
    embedding = reader.floating("transformer.vocab_embedding.weight", (rows, hidden))[:vocab]
    final_norm = reader.floating("transformer.ln_f.weight", (hidden,))
    if arch.tie_word_embeddings and "lm_head.weight" not in reader.tensors:
        lm_head: Linear = DenseLinear(embedding)
    else:
        lm_head = reader.linear("lm_head", rows, hidden)
        if rows != vocab:
            if not isinstance(lm_head, DenseLinear):
                raise InputError(
                    "a quantized lm_head with a padded vocabulary is not implemented",
                    path=reader.path,
                    hint="leave lm_head unquantized (ModelOpt's default)",
                )
            lm_head = DenseLinear(
                lm_head.weight[:vocab], None if lm_head.bias is None else lm_head.bias[:vocab]
            )
    if reader.tensors:
        unknown = ", ".join(sorted(reader.tensors)[:5])
        raise InputError(
            f"{len(reader.tensors)} tensors this runtime does not know how to use ({unknown}...)",
            path=reader.path,
            hint="the checkpoint has features the reference runtime does not implement",
        )
    return ModelWeights(embedding=embedding, layers=layers, final_norm=final_norm, lm_head=lm_head)
