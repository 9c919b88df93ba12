"""Check an exported TensorRT-LLM checkpoint against the Hugging Face config it came from.

Exporters lose fields silently (transformers 5 hides rope_theta in
rope_parameters and ModelOpt then omits rotary_base; a missing
max_position_embeddings becomes 2048), and a weight-only ModelOpt config exports
fp16 weights labelled W8A8. So every field that matters and every tensor's name,
shape and dtype is checked. Fields that do not shape a tensor (rotary base, norm
epsilon, positions, sliding window) are set from the Hugging Face config and the
repair recorded; anything else that disagrees fails the export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.calibration.records import Repair
from pipeline.core.atomic import write_text_atomic
from pipeline.core.errors import InputError, StageError
from pipeline.facts.architecture import Architecture
from pipeline.facts.formats import WeightFormat, format_for_quant_algo
from pipeline.runtime.checkpoint import UNPADDED_VOCAB

CHECKPOINT_CONFIG = "config.json"
RANK0_WEIGHTS = "rank0.safetensors"

EMBEDDING = "transformer.vocab_embedding.weight"
LM_HEAD = "lm_head.weight"

DTYPE_CODES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
SCALE_CODE = "F32"  # ModelOpt exports every scaling factor in float32


class CheckpointMismatchError(StageError):
    """The exported checkpoint disagrees with the model it was exported from."""

    def __init__(self, checkpoint: Path, problems: list[str]) -> None:
        self.problems = problems
        more = f" (+{len(problems) - 3} more, see the stage log)" if len(problems) > 3 else ""
        super().__init__(
            "calibrate",
            f"exported checkpoint {checkpoint} does not match the Hugging Face config: "
            + "; ".join(problems[:3])
            + more,
            hint="this is an exporter/version problem; check the ModelOpt and transformers versions",
        )


def check_config(
    trt: dict[str, Any],
    arch: Architecture,
    *,
    quant_algo: str | None,
    kv_cache_quant_algo: str | None,
    export_dtype: str,
) -> tuple[dict[str, Any], list[Repair], list[str]]:
    """(repaired config, repairs, problems). Pure: `trt` is not modified."""
    fixed = json.loads(json.dumps(trt))
    repairs: list[Repair] = []
    problems: list[str] = []
    if trt.get("dtype") != export_dtype:
        problems.append(f"dtype is {trt.get('dtype')!r}, expected {export_dtype!r}")
    exported_vocab = format_for_quant_algo(quant_algo).exported_vocab_size(arch.vocab_size)
    if exported_vocab != arch.vocab_size and trt.get(UNPADDED_VOCAB) != arch.vocab_size:
        # The runtime and the tokenizer know the real size; TensorRT-LLM keeps an unknown key as an
        # attribute (PretrainedConfig.__init__'s kwargs) and reads vocab_size for the padded rows.
        fixed[UNPADDED_VOCAB] = arch.vocab_size
        repairs.append(
            Repair(
                field=UNPADDED_VOCAB,
                found=trt.get(UNPADDED_VOCAB),
                fixed=arch.vocab_size,
                reason=f"vocab_size padded to {exported_vocab} by the AWQ export (vocab_size)",
            )
        )
    shaping = {
        "vocab_size": exported_vocab,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_hidden_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads,
        "head_size": arch.head_dim,
    }
    for field, expected in shaping.items():
        if trt.get(field) != expected:
            says = (
                "the Hugging Face config says"
                if field != "vocab_size" or expected == arch.vocab_size
                else (
                    f"expected {arch.vocab_size} (the Hugging Face config) padded to a multiple of "
                    f"{format_for_quant_algo(quant_algo).pads_vocab_to}:"
                )
            )
            problems.append(f"{field} is {trt.get(field)!r}, {says} {expected!r}")
    derivable: dict[str, tuple[Any, str]] = {
        "rotary_base": (arch.rope_theta, "rope_theta"),
        "norm_epsilon": (arch.rms_norm_eps, "rms_norm_eps"),
        "max_position_embeddings": (arch.max_position_embeddings, "max_position_embeddings"),
    }
    if arch.sliding_window is not None and arch.sliding_window < arch.max_position_embeddings:
        # ModelOpt writes no window; TensorRT-LLM must be told (max_attention_window_size) at build.
        derivable["sliding_window"] = (arch.sliding_window, "sliding_window")
    elif "sliding_window" in trt and trt["sliding_window"] is not None:
        derivable["sliding_window"] = (None, "sliding_window (none, or not smaller than the context)")
    for field, (expected, hf_name) in derivable.items():
        found = trt.get(field)
        if not _same(found, expected):
            fixed[field] = expected
            reason = "missing" if field not in trt else "differs from the Hugging Face config"
            repairs.append(Repair(field=field, found=found, fixed=expected, reason=f"{reason} ({hf_name})"))
    quantization = trt.get("quantization") or {}
    group_size = format_for_quant_algo(quant_algo).group_size
    if group_size is not None and quantization.get("group_size") != group_size:
        problems.append(
            f"quantization.group_size is {quantization.get('group_size')!r}, expected {group_size}"
        )
    if quantization.get("quant_algo") != quant_algo:
        problems.append(
            f"quantization.quant_algo is {quantization.get('quant_algo')!r}, expected {quant_algo!r}"
        )
    if quantization.get("kv_cache_quant_algo") != kv_cache_quant_algo:
        problems.append(
            f"quantization.kv_cache_quant_algo is {quantization.get('kv_cache_quant_algo')!r}, "
            f"expected {kv_cache_quant_algo!r}"
        )
    return fixed, repairs, problems


def _same(found: Any, expected: Any) -> bool:
    if isinstance(found, (int, float)) and isinstance(expected, (int, float)):
        return abs(float(found) - float(expected)) <= 1e-9 * max(1.0, abs(float(expected)))
    return found == expected


TensorSpec = tuple[str, tuple[int, ...] | None]  # (safetensors dtype code, shape or None for any)


def expected_tensors(
    arch: Architecture, *, quant_algo: str | None, kv_cache_quant_algo: str | None, export_dtype: str
) -> dict[str, TensorSpec]:
    """Every tensor rank0.safetensors must hold, with dtype and shape. Pure."""
    act = DTYPE_CODES[export_dtype]
    h = arch.hidden_size
    vocab = format_for_quant_algo(quant_algo).exported_vocab_size(arch.vocab_size)
    out: dict[str, TensorSpec] = {
        EMBEDDING: (act, (vocab, h)),
        "transformer.ln_f.weight": (act, (h,)),
    }
    if not arch.tie_word_embeddings:
        out[LM_HEAD] = (act, (vocab, h))
    for n in range(arch.num_hidden_layers):
        prefix = f"transformer.layers.{n}."
        out[prefix + "input_layernorm.weight"] = (act, (h,))
        out[prefix + "post_layernorm.weight"] = (act, (h,))
        for linear, (rows, cols) in arch.linears.items():
            out |= _linear_tensors(prefix + linear, rows, cols, format_for_quant_algo(quant_algo), act)
        if kv_cache_quant_algo is not None:
            for scale in ("kv_cache_scaling_factor", "k_cache_scaling_factor", "v_cache_scaling_factor"):
                out[prefix + "attention." + scale] = (SCALE_CODE, (1,))
    return out


def _linear_tensors(name: str, rows: int, cols: int, fmt: WeightFormat, act: str) -> dict[str, TensorSpec]:
    """The tensors of one linear as the format's layout lays them out."""
    layout = fmt.layout
    if layout is None:  # unquantized, or W8A16: TensorRT-LLM quantizes these fp16 weights when it builds
        return {name + ".weight": (act, (rows, cols))}
    scale_shape = {
        "channel": (rows,),
        "group": (rows, cols // (fmt.group_size or 1)),
        "tensor": (1,),
    }[layout.weight_scale]
    out: dict[str, TensorSpec] = {
        name + ".weight": (layout.weight_dtype, (rows // layout.values_per_element, cols)),
        name + ".weights_scaling_factor": (SCALE_CODE, scale_shape),
    }
    if layout.activation_scale:
        out[name + ".activation_scaling_factor"] = (SCALE_CODE, (1,))
    if layout.prequant_scale:
        out[name + ".prequant_scaling_factor"] = (act, (cols,))
    return out


def block_problems(arch: Architecture, fmt: WeightFormat) -> list[str]:
    """Why a per-group format cannot quantize this model (ModelOpt's export refuses such shapes)."""
    if fmt.group_size is None:
        return []
    return [
        f"{field} {value} is not a multiple of {fmt.precision.value}'s group size {fmt.group_size}"
        for field, value in arch.linear_inputs.items()
        if value % fmt.group_size
    ]


def check_tensors(found: dict[str, TensorSpec], expected: dict[str, TensorSpec]) -> list[str]:
    """Problems (missing, unexpected, wrong dtype or shape), in name order. Pure."""
    problems = []
    for name in sorted(set(expected) - set(found)):
        problems.append(f"tensor {name} is missing")
    for name in sorted(set(found) - set(expected)):
        problems.append(f"tensor {name} is not expected for this precision")
    for name in sorted(set(found) & set(expected)):
        (dtype, shape), (want_dtype, want_shape) = found[name], expected[name]
        if dtype != want_dtype:
            problems.append(f"tensor {name} is {dtype}, expected {want_dtype}")
        if want_shape is not None and shape != want_shape:
            problems.append(f"tensor {name} has shape {list(shape or ())}, expected {list(want_shape)}")
    return problems


def read_safetensors_header(path: Path) -> dict[str, TensorSpec]:
    """Names, dtypes and shapes from a safetensors header, without reading the tensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if length <= 0 or 8 + length > size:
                raise InputError("not a safetensors file (bad header length)", path=path)
            header = json.loads(f.read(length))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the safetensors header: {exc}", path=path) from None
    return {
        name: (entry["dtype"], tuple(entry["shape"]))
        for name, entry in header.items()
        if name != "__metadata__"
    }


def padded_rows_problems(weights: Path, vocab_size: int) -> list[str]:
    """The rows past the real vocabulary in the embedding and lm_head must be the zeros the export
    pads with: a nonzero one is a token the tokenizer cannot name that the model could still pick."""
    from safetensors import safe_open

    problems = []
    with safe_open(str(weights), framework="pt") as f:
        for name in (EMBEDDING, LM_HEAD):
            if name not in f.keys():
                continue
            tensor = f.get_slice(name)
            rows = tensor.get_shape()[0]
            if rows > vocab_size and bool(tensor[vocab_size:rows].any()):
                problems.append(
                    f"tensor {name}: rows {vocab_size}..{rows - 1} (vocabulary padding) are not zero"
                )
    return problems


def verify_checkpoint(
    checkpoint_dir: Path,
    arch: Architecture,
    *,
    quant_algo: str | None,
    kv_cache_quant_algo: str | None,
    export_dtype: str,
    repair: bool = True,
) -> list[Repair]:
    """Check config.json and rank0.safetensors; with `repair`, rewrite config.json with the
    derivable fields set from the Hugging Face config. Raises CheckpointMismatchError."""
    config_path = checkpoint_dir / CHECKPOINT_CONFIG
    try:
        trt = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointMismatchError(checkpoint_dir, [f"{CHECKPOINT_CONFIG} unreadable: {exc}"]) from None
    fixed, repairs, problems = check_config(
        trt, arch, quant_algo=quant_algo, kv_cache_quant_algo=kv_cache_quant_algo, export_dtype=export_dtype
    )
    if not repair:
        problems += [f"{r.field} is {r.found!r}, the Hugging Face config says {r.fixed!r}" for r in repairs]
    found = read_safetensors_header(checkpoint_dir / RANK0_WEIGHTS)
    problems += check_tensors(
        found,
        expected_tensors(
            arch, quant_algo=quant_algo, kv_cache_quant_algo=kv_cache_quant_algo, export_dtype=export_dtype
        ),
    )
    if not problems:
        problems += padded_rows_problems(checkpoint_dir / RANK0_WEIGHTS, arch.vocab_size)
    if problems:
        raise CheckpointMismatchError(checkpoint_dir, problems)
    if repair and repairs:
        write_text_atomic(config_path, json.dumps(fixed, indent=4) + "\n")
    return repairs
