"""Turn a checkpoint's tensors into the runtime's layers, checking every name, shape and dtype.

Which linear kind a module gets follows TensorRT-LLM 1.2.1's quantize_layers:
the checkpoint's quant_algo applies to every linear layer except those that
match an exclude_modules pattern (fnmatch on the module's dotted name).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import InputError
from pipeline.runtime.checkpoint import WEIGHTS_NAME, CheckpointConfig, QuantAlgo
from pipeline.runtime.linear import (
    DenseLinear,
    Linear,
    SmoothQuantLinear,
    WeightOnlyLinear,
    quantize_weight_per_channel,
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
        weight = self.take(f"{module}.weight", (out_features, in_features))
        if algo is None:
            if not weight.is_floating_point():
                raise InputError(
                    f"tensor '{module}.weight' is {weight.dtype} but the module is not quantized "
                    f"(quant_algo {self.config.quant_algo and self.config.quant_algo.value}, "
                    f"exclude_modules {list(self.config.quantization.excluded_patterns)})",
                    path=self.path,
                )
            return DenseLinear(weight.float(), bias)
        if algo is QuantAlgo.W8A16:
            if weight.is_floating_point():
                # TensorRT-LLM quantizes floating-point W8A16 weights when it loads them to build.
                qweight, scale = quantize_weight_per_channel(weight, self.dtype)
            else:
                qweight = self._int8(f"{module}.weight", weight)
                scale = self.floating(f"{module}.weights_scaling_factor", (out_features,))
            return WeightOnlyLinear(qweight, scale, bias)
        qweight = self._int8(f"{module}.weight", weight)
        return SmoothQuantLinear(
            qweight=qweight,
            weight_scale=self.floating(f"{module}.weights_scaling_factor", (out_features,)),
            activation_scale=self.floating(f"{module}.activation_scaling_factor", (1,)),
            prequant_scale=self._optional_float(f"{module}.prequant_scaling_factor", (in_features,)),
            bias=bias,
        )

    def _optional_float(self, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        return self.floating(name, shape) if name in self.tensors else None

    def _int8(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if weight.dtype != torch.int8:
            raise InputError(
                f"tensor '{name}' is {weight.dtype}, but quant_algo {self.config.quant_algo.value} needs int8 "
                "weights (a mislabelled export?)",
                path=self.path,
            )
        return weight


def build_weights(
    tensors: dict[str, torch.Tensor], config: CheckpointConfig, checkpoint_dir: Path
) -> ModelWeights:
    reader = _TensorReader(dict(tensors), config, checkpoint_dir / WEIGHTS_NAME)
    hidden, ffn, head = config.hidden_size, config.ffn_size, config.head_dim
    qkv_out = (config.num_attention_heads + 2 * config.kv_heads) * head
    layers = []
    for i in range(config.num_hidden_layers):
        p = f"transformer.layers.{i}"
        layers.append(
            DecoderLayer(
                input_norm=reader.floating(f"{p}.input_layernorm.weight", (hidden,)),
                qkv=reader.linear(f"{p}.attention.qkv", qkv_out, hidden),
                dense=reader.linear(f"{p}.attention.dense", hidden, config.num_attention_heads * head),
                post_norm=reader.floating(f"{p}.post_layernorm.weight", (hidden,)),
                fc=reader.linear(f"{p}.mlp.fc", ffn, hidden),
                gate=reader.linear(f"{p}.mlp.gate", ffn, hidden),
                proj=reader.linear(f"{p}.mlp.proj", hidden, ffn),
            )
        )
    if config.quant_algo is QuantAlgo.W8A16 and not reader.is_excluded("transformer.vocab_embedding"):
        raise InputError(
            "quantization.exclude_modules leaves transformer.vocab_embedding quantized: TensorRT-LLM would build "
            "an int8 embedding, which the reference runtime does not implement",
            path=checkpoint_dir / "config.json",
            hint="add '*vocab_embedding' to exclude_modules (TensorRT-LLM's default list has it)",
        )
    embedding = reader.floating("transformer.vocab_embedding.weight", (config.vocab_size, hidden))
    final_norm = reader.floating("transformer.ln_f.weight", (hidden,))
    if config.share_embedding_table and "lm_head.weight" not in reader.tensors:
        lm_head: Linear = DenseLinear(embedding)
    else:
        lm_head = reader.linear("lm_head", config.vocab_size, hidden)
    if reader.tensors:
        unknown = ", ".join(sorted(reader.tensors)[:5])
        raise InputError(
            f"{len(reader.tensors)} tensors this runtime does not know how to use ({unknown}...)",
            path=reader.path,
            hint="the checkpoint has features the reference runtime does not implement",
        )
    return ModelWeights(embedding=embedding, layers=layers, final_norm=final_norm, lm_head=lm_head)
