"""Read ModelOpt's unified Hugging Face checkpoint as TensorRT-LLM's PyTorch backend does, into the
reference runtime's layers.

What the PyTorch backend does with each linear (tensorrt_llm/_torch/modules/linear.py, the 1.2-era
version in the stored index, and the newest stored, @ 00bbf71e; get_quant_method and each method's
load_weights):
- q/k/v and gate/up are one fused linear: their weights (and scales) are concatenated by rows
  (load_weights_fused_qkv_linear, load_weights_fused_gate_up_linear);
- unquantized (UnquantizedLinearMethod): `weight` [out, in], copied into the model dtype;
- W8A16 (WeightOnlyQuantLinearMethod): `weight` int8 [out, in] and `weight_scale` [out], which
  copy_weight casts into a parameter of the model dtype; y = x (w * scale)^T;
- W4A16_AWQ (W4A16_AWQ_LinearMethod): `weight` int4 packed [out/2, in], `weight_scale`
  [out, in/group] copied (transposed) into the model dtype, and where the checkpoint has one a
  `pre_quant_scale` [in] (in its own dtype) that multiplies the input first; a linear without one
  (q/k/v, gate/up: the export folded it into the norm) multiplies nothing.
- the embedding and lm_head (hf_quant_config's exclude_modules) stay unquantized.

The reference runtime's kernels (pipeline.runtime.weights, per quant_algo) already compute exactly
that for the TensorRT-LLM checkpoint: so this module renames and fuses the unified tensors into that
checkpoint's layout, with the scales rounded to the model dtype where the PyTorch backend rounds them,
and builds the same CheckpointConfig from config.json and hf_quant_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.core.errors import InputError
from pipeline.facts.architecture import HF_CONFIG, HF_LINEARS, Architecture
from pipeline.facts.layout import HF_QUANT_CONFIG
from pipeline.runtime.checkpoint import CheckpointConfig, parse_checkpoint_config
from pipeline.runtime.weights import TORCH_DTYPES

# The PyTorch backend quantizes only linear layers: the embedding never.
NEVER_QUANTIZED = ("*vocab_embedding",)
_RENAMED = {
    "model.embed_tokens.weight": "transformer.vocab_embedding.weight",
    "model.norm.weight": "transformer.ln_f.weight",
    "lm_head.weight": "lm_head.weight",
}
_NORMS = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_layernorm"}
# What each unified tensor of a linear is in the TensorRT-LLM checkpoint.
_PARTS = {
    "weight": "weight",
    "weight_scale": "weights_scaling_factor",
    "pre_quant_scale": "prequant_scaling_factor",
}


def unified_config(checkpoint_dir: Path) -> CheckpointConfig:
    """The checkpoint's config.json and hf_quant_config.json as the reference runtime's config."""
    hf_path, quant_path = checkpoint_dir / HF_CONFIG, checkpoint_dir / HF_QUANT_CONFIG
    try:
        hf = json.loads(hf_path.read_text())
        quant = json.loads(quant_path.read_text()).get("quantization", {}) if quant_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable unified checkpoint config: {exc}", path=checkpoint_dir) from None
    arch = Architecture.from_hf_config(hf, hf_path)
    excluded = list(quant.get("exclude_modules") or [])
    unknown = [m for m in excluded if m != "lm_head"]
    if unknown:
        raise InputError(
            f"quantization.exclude_modules names {unknown}: the reference runtime reads only 'lm_head' there",
            path=quant_path,
        )
    data: dict[str, Any] = {
        "architecture": (hf.get("architectures") or [""])[0],
        "dtype": hf.get("dtype", hf.get("torch_dtype")),
        "num_hidden_layers": arch.num_hidden_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads,
        "head_size": arch.head_dim,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "vocab_size": arch.vocab_size,
        "hidden_act": hf.get("hidden_act", "silu"),
        "norm_epsilon": arch.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": arch.rope_theta,
        "rotary_scaling": hf.get("rope_scaling"),
        "max_position_embeddings": arch.max_position_embeddings,
        "sliding_window": arch.sliding_window,
        "share_embedding_table": arch.tie_word_embeddings,
        "quantization": {
            "quant_algo": quant.get("quant_algo"),
            "kv_cache_quant_algo": quant.get("kv_cache_quant_algo"),
            "group_size": quant.get("group_size") or 128,
            "exclude_modules": [*excluded, *NEVER_QUANTIZED] if quant.get("quant_algo") else None,
        },
    }
    return parse_checkpoint_config(data, hf_path)


def unified_pretrained_config(checkpoint_dir: Path) -> dict[str, Any]:
    """The checkpoint's config as an engine's pretrained_config holds it (what runners' engine_config
    and bench read the model's shape from, whichever backend built it)."""
    return unified_config(checkpoint_dir).model_dump(mode="json")


def load_unified(checkpoint_dir: Path) -> tuple[CheckpointConfig, dict[str, torch.Tensor]]:
    """The config and the tensors in the TensorRT-LLM checkpoint's names and layout
    (pipeline.runtime.weights.build_weights reads them)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = unified_config(checkpoint_dir)
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise InputError("no *.safetensors weights", path=checkpoint_dir, hint="rerun calibrate")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            tensors |= load_file(path)
        except SafetensorError as exc:
            raise InputError(f"unreadable safetensors file: {exc}", path=path) from None
    return config, to_checkpoint_tensors(tensors, config, checkpoint_dir)


def to_checkpoint_tensors(
    tensors: dict[str, torch.Tensor], config: CheckpointConfig, source: Path
) -> dict[str, torch.Tensor]:
    """The unified tensors renamed and fused into the TensorRT-LLM checkpoint's (see the module doc)."""
    left = dict(tensors)
    dtype = TORCH_DTYPES[config.dtype]
    out = {new: left.pop(old) for old, new in _RENAMED.items() if old in left}
    for i in range(config.num_hidden_layers):
        hf, trt = f"model.layers.{i}", f"transformer.layers.{i}"
        for name, renamed in _NORMS.items():
            if f"{hf}.{name}.weight" in left:
                out[f"{trt}.{renamed}.weight"] = left.pop(f"{hf}.{name}.weight")
        for fused in dict.fromkeys(HF_LINEARS.values()):
            members = [f"{hf}.{m}" for m, t in HF_LINEARS.items() if t == fused]
            for part, renamed in _PARTS.items():
                found = [left.pop(f"{m}.{part}") for m in members if f"{m}.{part}" in left]
                if not found:
                    continue
                if len(found) != len(members):
                    raise InputError(
                        f"only some of {members} have a {part}: they are one fused linear", path=source
                    )
                out[f"{trt}.{fused}.{renamed}"] = _fused_part(part, found, config, dtype)
            if config.quant_algo == "W4A16_AWQ" and f"{trt}.{fused}.prequant_scaling_factor" not in out:
                # No pre_quant_scale: the PyTorch backend multiplies the input by nothing.
                cols = out[f"{trt}.{fused}.weight"].shape[1]
                out[f"{trt}.{fused}.prequant_scaling_factor"] = torch.ones(cols, dtype=dtype)
    if left:
        raise InputError(
            f"{len(left)} tensors the PyTorch backend's layout does not have ({', '.join(sorted(left)[:5])})",
            path=source,
        )
    return out


def _fused_part(
    part: str, found: list[torch.Tensor], config: CheckpointConfig, dtype: torch.dtype
) -> torch.Tensor:
    if part == "pre_quant_scale":
        if any(not torch.equal(found[0], t) for t in found[1:]):
            raise InputError("fused linears with different pre_quant_scale tensors share one input")
        return found[0]
    fused = torch.cat(found, dim=0)
    if part == "weight" and fused.dtype == torch.uint8:
        return fused.view(torch.int8)  # the same packed bytes, as the TensorRT-LLM checkpoint holds them
    if part == "weight_scale" and config.quant_algo == "W8A16":
        # copy_weight casts the per-channel scale into the model dtype's parameter.
        return fused.to(dtype).float()
    return fused
