"""The LLM API options of one profile: what `LLM(model, **options)` and `trtllm-serve
--extra_llm_api_options <file>` read. Pure: tested field by field against TensorRT-LLM's own names.

Field names (vendored in LLM_API_FIELDS) are those of tensorrt_llm/llmapi/llm_args.py: BaseLlmArgs
(max_batch_size, max_num_tokens, max_input_len, max_seq_len, kv_cache_config, enable_chunked_prefill;
max_input_len defaults to 1024 in the newest stored version, so it is always written), TorchLlmArgs
(cuda_graph_config), KvCacheConfig (free_gpu_memory_fraction, enable_block_reuse, dtype) and
CudaGraphConfig (batch_sizes, enable_padding). Every one of these models is a StrictBaseModel
(extra = "forbid"): a misspelt key fails the load. The 1.2.1 tag's own file is not in the stored
index, so the names were read on both sides of it: the 1.2.0rc-era llm_args.py (with
DeepSeekSparseAttentionConfig, before the 1.2 branch) and NVIDIA/TensorRT-LLM main @
0004396720054fd8e205cbf616f21f0b57c6b412 (2026), and the 1.0.0 / 1.3.0rc27 API reference pages;
tensorrtllm_backend r26.04 @ ce68ff5f pins release/1.2.1 (its tensorrt_llm submodule @ 2fdb9e66).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig, Profile
from pipeline.facts.formats import kv_cache_format
from pipeline.planning.memory import KV_FREE_FRACTION, ProfilePlan
from pipeline.runtime.limits import EngineLimits

OPTIONS_FILE = layout.LLM_API_OPTIONS

# Each LLM API model's fields that the options use, by the dotted path of the option that holds them.
LLM_API_FIELDS: dict[str, frozenset[str]] = {
    "": frozenset(
        {
            "max_batch_size",
            "max_num_tokens",
            "max_input_len",
            "max_seq_len",
            "enable_chunked_prefill",
            "kv_cache_config",
            "cuda_graph_config",
        }
    ),
    "kv_cache_config": frozenset({"free_gpu_memory_fraction", "enable_block_reuse", "dtype"}),
    "cuda_graph_config": frozenset({"batch_sizes", "enable_padding"}),
}

# KvCacheConfig.dtype: "auto" follows the checkpoint; "fp8" is the one quantized cache the PyTorch
# backend takes (TorchLlmArgs.sync_quant_config_with_kv_cache_config_dtype).
_KV_DTYPES = {"fp16": "auto", "fp8": "fp8"}


def cuda_graph_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to the profile's batch, and the batch itself: a decode step of any batch pads to
    the next captured graph (enable_padding), and each graph costs memory (up to 200 MB each, says
    TorchLlmArgs.cuda_graph_config), so not one per batch size."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return [*sizes, max_batch_size]


def llm_api_options(config: PipelineConfig, profile: Profile, plan: ProfilePlan) -> dict[str, Any]:
    """The options the profile means, from the same plan the memory check read."""
    options = {
        "max_batch_size": profile.max_batch_size,
        "max_num_tokens": plan.max_num_tokens,
        # Explicit: left unset, newer releases take 1024.
        "max_input_len": profile.max_input_len,
        # Always explicit: left unset, TensorRT-LLM takes the model's max_position_embeddings.
        "max_seq_len": profile.max_seq_len,
        # The plan's chunked context: a prompt longer than max_num_tokens is prefilled in chunks.
        "enable_chunked_prefill": plan.paged_context_fmha,
        "kv_cache_config": {
            # The fraction the memory plan assumed for the KV cache budget.
            "free_gpu_memory_fraction": KV_FREE_FRACTION,
            "enable_block_reuse": config.publish.enable_kv_cache_reuse,
            "dtype": _KV_DTYPES[kv_cache_format(plan.precision, plan.kv_cache_dtype).name],
        },
        "cuda_graph_config": {
            "batch_sizes": cuda_graph_batch_sizes(profile.max_batch_size),
            "enable_padding": True,
        },
    }
    unknown = unknown_fields(options)
    assert not unknown, f"options outside the vendored LLM API fields: {unknown}"
    return options


def read_options(engine_dir: Path) -> dict[str, Any]:
    """The options file a build wrote beside the checkpoint, or one line naming it."""
    path = engine_dir / OPTIONS_FILE
    try:
        options = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("the LLM API options are missing", path=path, hint="rebuild (--force)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON/YAML as the build writes it: {exc}", path=path) from None
    unknown = unknown_fields(options)
    if unknown:
        raise InputError(f"options outside TensorRT-LLM's fields: {', '.join(unknown)}", path=path)
    return options


def options_limits(engine_dir: Path, max_batch_size: int | None = None) -> EngineLimits:
    """The limits the LLM API enforces with these options (its batch lowered to max_batch_size)."""
    options = read_options(engine_dir)
    try:
        limits = EngineLimits(
            int(options["max_batch_size"]), int(options["max_input_len"]), int(options["max_seq_len"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"no usable limit {exc}", path=engine_dir / OPTIONS_FILE, hint="rebuild (--force)"
        ) from None
    if max_batch_size is None:
        return limits
    return replace(limits, max_batch_size=min(max_batch_size, limits.max_batch_size))


def unknown_fields(options: dict[str, Any], prefix: str = "") -> list[str]:
    """Option names (dotted) that the vendored LLM API models do not have."""
    known = LLM_API_FIELDS.get(prefix, frozenset())
    out = []
    for name, value in options.items():
        path = f"{prefix}.{name}" if prefix else name
        if name not in known:
            out.append(path)
        elif isinstance(value, dict):
            out += unknown_fields(value, path)
    return out


def options_text(options: dict[str, Any]) -> str:
    """The options file: JSON, which is YAML too (trtllm-serve reads the file with yaml.safe_load), so
    the pipeline needs no YAML writer."""
    return json.dumps(options, indent=2) + "\n"
