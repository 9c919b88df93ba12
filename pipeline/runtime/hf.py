"""Read a Hugging Face checkpoint (what the PyTorch backend's LLM API loads) into the reference runtime.

The PyTorch backend runs the Hugging Face folder itself: config.json, *.safetensors and the
tokenizer, with no conversion step. The reference runtime computes with TensorRT-LLM's layer
names (pipeline.runtime.weights), so this module renames the tensors as TensorRT-LLM's own
Hugging Face loader does for Llama/Mistral (q/k/v fused in that order into qkv; gate_proj -> mlp.fc,
up_proj -> mlp.gate, down_proj -> mlp.proj) and derives the checkpoint config from the Hugging Face
one, so the same forward pass runs either checkpoint.

Unquantized checkpoints only, for now: a folder with hf_quant_config.json (ModelOpt's unified export of
a quantized model) is refused in one line; its formats come with calibrate's unified export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from pipeline.facts.architecture import Architecture
from pipeline.runtime.checkpoint import CheckpointConfig, parse_checkpoint_config
from pipeline.runtime.limits import EngineLimits

HF_CONFIG = "config.json"
HF_QUANT_CONFIG = "hf_quant_config.json"
# Hugging Face module -> the runtime's (TensorRT-LLM's) name, inside model.layers.N.
_LAYER_RENAMES = {
    "input_layernorm": "input_layernorm",
    "post_attention_layernorm": "post_layernorm",
    "self_attn.o_proj": "attention.dense",
    "mlp.gate_proj": "mlp.fc",
    "mlp.up_proj": "mlp.gate",
    "mlp.down_proj": "mlp.proj",
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def checkpoint_config(model_dir: Path) -> CheckpointConfig:
    """The runtime's config for a Hugging Face folder, each field from the Hugging Face config."""
    path = model_dir / HF_CONFIG
    if (model_dir / HF_QUANT_CONFIG).is_file():
        raise InputError(
            "a quantized unified checkpoint: the reference runtime reads unquantized Hugging Face checkpoints",
            path=model_dir / HF_QUANT_CONFIG,
            hint="serve it with TensorRT-LLM's PyTorch backend on a GPU",
        )
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the Hugging Face config: {exc}", path=path) from None
    arch = Architecture.from_hf_config(cfg, path)
    architectures = cfg.get("architectures") or [None]
    data: dict[str, Any] = {
        "architecture": architectures[0],
        "dtype": cfg.get("torch_dtype") or cfg.get("dtype"),
        "num_hidden_layers": arch.num_hidden_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads,
        "hidden_size": arch.hidden_size,
        "head_size": arch.head_dim,
        "intermediate_size": arch.intermediate_size,
        "vocab_size": arch.vocab_size,
        "hidden_act": cfg.get("hidden_act"),
        "norm_epsilon": arch.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": arch.rope_theta,
        "rotary_scaling": cfg.get("rope_scaling"),
        "max_position_embeddings": arch.max_position_embeddings,
        "sliding_window": arch.sliding_window,
        "share_embedding_table": arch.tie_word_embeddings,
    }
    return parse_checkpoint_config(data, path)


def runtime_tensors(tensors: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """The Hugging Face tensors under the runtime's names; a tensor it has no name for is kept as it
    is, so build_weights refuses it by name rather than it being dropped."""
    import torch

    out = dict(tensors)

    def move(src: str, dst: str) -> None:
        if src in out:
            out[dst] = out.pop(src)

    move("model.embed_tokens.weight", "transformer.vocab_embedding.weight")
    move("model.norm.weight", "transformer.ln_f.weight")
    for i in range(num_layers):
        hf, ours = f"model.layers.{i}", f"transformer.layers.{i}"
        for src, dst in _LAYER_RENAMES.items():
            move(f"{hf}.{src}.weight", f"{ours}.{dst}.weight")
        names = [f"{hf}.{m}.weight" for m in _QKV]
        if all(n in out for n in names):
            out[f"{ours}.attention.qkv.weight"] = torch.cat([out.pop(n) for n in names], dim=0)
    return out


def load_tensors(model_dir: Path) -> dict[str, Any]:
    """Every *.safetensors file of the folder (safetensors only: no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise InputError("no *.safetensors weights", path=model_dir, hint="a checkpoint needs its weights")
    tensors: dict[str, Any] = {}
    for path in files:
        try:
            tensors.update(load_file(path))
        except SafetensorError as exc:
            raise InputError(f"unreadable safetensors file: {exc}", path=path) from None
    return tensors


def load_model(model_dir: Path, limits: EngineLimits | None):
    """The reference runtime over a Hugging Face folder, enforcing `limits`."""
    from pipeline.runtime.model import ReferenceModel
    from pipeline.runtime.weights import build_weights

    config = checkpoint_config(model_dir)
    tensors = runtime_tensors(load_tensors(model_dir), config.num_hidden_layers)
    return ReferenceModel(config, build_weights(tensors, config, model_dir), limits)
