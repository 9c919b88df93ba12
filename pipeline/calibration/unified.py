"""ModelOpt's unified Hugging Face checkpoint (the PyTorch backend's input): export it, and check it
against the model it came from.

Read in nvidia-modelopt 0.37.0 (modelopt/torch/export/unified_export_hf.py, export_hf_checkpoint and
_export_hf_checkpoint; quant_utils.py, to_quantized_weight, fuse_prequant_layernorm,
preprocess_linear_fusion) and checked by running it on the tiny model:

- it writes model.safetensors (Hugging Face names; save_pretrained shards a large one into
  model-0000k-of-0000n.safetensors), config.json with a `quantization_config`, and hf_quant_config.json
  ({"producer", "quantization": {"quant_algo", "kv_cache_quant_algo", "group_size", "exclude_modules",
  ...}}), which is what TensorRT-LLM's PyTorch backend reads (_torch/model_config.py,
  ModelConfig.load_modelopt_quant_config: quant_algo, kv_cache_quant_algo, group_size, exclude_modules);
- unquantized tensors keep the model's dtype (its `dtype` argument applies to the quantized weights);
  quantized layers add "lm_head" to exclude_modules;
- INT8 weights per channel: `weight` int8 [out, in], `weight_scale` float32 [out] (no `input_scale`
  when the input quantizers are off); INT4 AWQ: `weight` uint8 [out/2, in] (two output rows a byte),
  `weight_scale` float32 [out, in/group]; the linears that share an input (q/k/v, gate/up) are
  resmoothed to one pre_quant_scale that is folded into the RMSNorm before them, so only o_proj and
  down_proj keep a `pre_quant_scale` [in] (in the model's dtype).

The config that decides numerics is checked field by field against the source model's (nothing is
repaired: the file is transformers' own), the quantization in both files against the recipe, and
every tensor's name, dtype and shape against the layout above.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.calibration.quiet import output_to_log
from pipeline.calibration.recipes import Recipe
from pipeline.calibration.verify import (
    DTYPE_CODES,
    SCALE_CODE,
    CheckpointMismatchError,
    TensorSpec,
    check_tensors,
    read_safetensors_header,
)
from pipeline.core.atomic import write_text_atomic
from pipeline.core.errors import InputError
from pipeline.facts.architecture import HF_CONFIG, Architecture
from pipeline.facts.formats import Precision, format_for_quant_algo
from pipeline.facts.layout import HF_QUANT_CONFIG

# The formats whose unified layout this module knows (fp8's scales are not read here yet).
UNIFIED_PRECISIONS = (Precision.fp16, Precision.bf16, Precision.int8_wo, Precision.int4_awq)
# ModelOpt 0.37 labels any 8-bit weight quantizer int8_sq (quant_utils.get_quantization_format).
MODELOPT_INT8_LABEL = "W8A8_SQ_PER_CHANNEL"
# Linears whose pre_quant_scale AWQ folds into the RMSNorm before them (they share its output).
AWQ_FUSED = frozenset(
    {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"}
)


def weight_files(checkpoint_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files (one, or save_pretrained's shards)."""
    return sorted(checkpoint_dir.glob("*.safetensors"))


def export_dtype(recipe: Recipe, load_dtype: str) -> str:
    """The unified checkpoint's dtype: an unquantized format's own; a quantized one keeps the dtype
    the model was calibrated in (casting a calibrated model would cast its quantizers' statistics)."""
    return load_dtype if recipe.quantizes else recipe.format.export_dtype


def export_unified(
    model: Any, tokenizer: Any, recipe: Recipe, out_dir: Path, dtype: str, log: logging.Logger
) -> None:
    """export_hf_checkpoint into out_dir, with the tokenizer (the LLM API loads it from the checkpoint
    folder), labelled W8A16 when the weights are INT8 weight-only."""
    import torch
    from modelopt.torch.export import export_hf_checkpoint

    if precision_unsupported(recipe.precision):
        raise InputError(
            f"the unified Hugging Face checkpoint of {recipe.precision.value} is not checked by this "
            f"pipeline yet; it exports {', '.join(p.value for p in UNIFIED_PRECISIONS)}",
            hint="use the trtllm-engine backend for this precision, or another precision",
        )
    torch_dtype = getattr(torch, dtype)
    if not recipe.quantizes:
        model = model.to(torch_dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), output_to_log(log):
        export_hf_checkpoint(model, dtype=torch_dtype, export_dir=out_dir)
    tokenizer.save_pretrained(out_dir)
    if recipe.quant_algo == "W8A16":
        _relabel(out_dir, found=MODELOPT_INT8_LABEL, label="W8A16")
        log.info("labelled %s quant_algo=W8A16 (ModelOpt wrote %s)", out_dir, MODELOPT_INT8_LABEL)


def precision_unsupported(precision: Precision) -> bool:
    return precision not in UNIFIED_PRECISIONS


def _relabel(out_dir: Path, *, found: str, label: str) -> None:
    """Set quant_algo in hf_quant_config.json and config.json's quantization_config."""
    for name, section in ((HF_QUANT_CONFIG, "quantization"), (HF_CONFIG, "quantization_config")):
        path = out_dir / name
        data = json.loads(path.read_text())
        if data[section].get("quant_algo") != found:
            raise CheckpointMismatchError(
                out_dir,
                [f"{name}: {section}.quant_algo is {data[section].get('quant_algo')!r}, expected {found!r}"],
            )
        data[section]["quant_algo"] = label
        write_text_atomic(path, json.dumps(data, indent=4) + "\n")


def expected_unified_tensors(
    arch: Architecture, *, quant_algo: str | None, dtype: str
) -> dict[str, TensorSpec]:
    """Every tensor the unified checkpoint must hold, with dtype and shape. Pure."""
    act = DTYPE_CODES[dtype]
    h = arch.hidden_size
    out: dict[str, TensorSpec] = {
        "model.embed_tokens.weight": (act, (arch.vocab_size, h)),
        "model.norm.weight": (act, (h,)),
    }
    if not arch.tie_word_embeddings:
        out["lm_head.weight"] = (act, (arch.vocab_size, h))  # excluded from quantization
    fmt = format_for_quant_algo(quant_algo)
    for n in range(arch.num_hidden_layers):
        prefix = f"model.layers.{n}."
        out[prefix + "input_layernorm.weight"] = (act, (h,))
        out[prefix + "post_attention_layernorm.weight"] = (act, (h,))
        for linear, (rows, cols) in arch.hf_linears.items():
            name = prefix + linear
            if quant_algo is None:
                out[name + ".weight"] = (act, (rows, cols))
            elif quant_algo == "W8A16":
                out[name + ".weight"] = ("I8", (rows, cols))
                out[name + ".weight_scale"] = (SCALE_CODE, (rows,))
            elif quant_algo == "W4A16_AWQ":
                group = fmt.group_size or 1
                out[name + ".weight"] = ("U8", (rows // 2, cols))
                out[name + ".weight_scale"] = (SCALE_CODE, (rows, cols // group))
                if linear not in AWQ_FUSED:
                    out[name + ".pre_quant_scale"] = (act, (cols,))
            else:
                raise AssertionError(f"no unified layout for {quant_algo}")
    return out


def check_unified_config(
    hf: dict[str, Any],
    quant: dict[str, Any],
    found: Architecture,
    arch: Architecture,
    *,
    quant_algo: str | None,
    kv_cache_quant_algo: str | None,
    dtype: str,
) -> list[str]:
    """What in config.json (hf, read as `found`) and hf_quant_config.json (quant) disagrees with the
    source model (arch) and the recipe. Pure."""
    problems = [
        f"{HF_CONFIG}: {field} is {getattr(found, field)!r}, the source model says {expected!r}"
        for field, expected in vars(arch).items()
        if field != "source" and getattr(found, field) != expected
    ]
    written = hf.get("dtype", hf.get("torch_dtype"))
    if written != dtype:
        problems.append(f"{HF_CONFIG}: dtype is {written!r}, expected {dtype!r}")
    section = quant.get("quantization") or {}
    expected = {"quant_algo": quant_algo, "kv_cache_quant_algo": kv_cache_quant_algo}
    group_size = format_for_quant_algo(quant_algo).group_size
    if group_size is not None:
        expected |= {"group_size": group_size, "has_zero_point": False}
    for key, value in expected.items():
        if section.get(key) != value:
            problems.append(
                f"{HF_QUANT_CONFIG}: quantization.{key} is {section.get(key)!r}, expected {value!r}"
            )
    if quant_algo is not None:
        if "lm_head" not in (section.get("exclude_modules") or []):
            problems.append(f"{HF_QUANT_CONFIG}: quantization.exclude_modules does not name lm_head")
        labelled = (hf.get("quantization_config") or {}).get("quant_algo")
        if labelled != quant_algo:
            problems.append(
                f"{HF_CONFIG}: quantization_config.quant_algo is {labelled!r}, expected {quant_algo!r}"
            )
    return problems


def verify_unified(
    checkpoint_dir: Path,
    arch: Architecture,
    *,
    quant_algo: str | None,
    kv_cache_quant_algo: str | None,
    dtype: str,
) -> int:
    """Check config.json, hf_quant_config.json and the weights against the source model's shape and
    the recipe; the number of tensors. Raises CheckpointMismatchError."""
    try:
        hf = json.loads((checkpoint_dir / HF_CONFIG).read_text())
        quant = json.loads((checkpoint_dir / HF_QUANT_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointMismatchError(checkpoint_dir, [f"unreadable: {exc}"]) from None
    problems = check_unified_config(
        hf,
        quant,
        Architecture.from_hf_config(hf, checkpoint_dir / HF_CONFIG),
        arch,
        quant_algo=quant_algo,
        kv_cache_quant_algo=kv_cache_quant_algo,
        dtype=dtype,
    )
    found: dict[str, TensorSpec] = {}
    for path in weight_files(checkpoint_dir):
        found |= read_safetensors_header(path)
    problems += check_tensors(found, expected_unified_tensors(arch, quant_algo=quant_algo, dtype=dtype))
    if problems:
        raise CheckpointMismatchError(checkpoint_dir, problems)
    return len(found)
