"""An engine directory in TensorRT-LLM's shape: its config.json, the engine file, and the checks on them.

    engine/config.json       TensorRT-LLM's engine config: version, pretrained_config, build_config
    engine/rank0.engine      the TensorRT engine (trtllm-engine), or
    engine/rank0.safetensors the verified checkpoint the reference runtime runs (reference)
    engine/build_info.json   EngineInfo (pipeline.backends.base): backend, target, GPU and SM, versions

The reference backend writes the same config.json, so both backends' engines
are read the same way (limits, chunked context). An engine runs only on the GPU
architecture and the TensorRT version that built it, so both are recorded next
to it and checked by whoever loads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError, StageError
from pipeline.facts.config import BuildSection, Profile
from pipeline.planning.memory import ProfilePlan
from pipeline.runtime.limits import EngineLimits

ENGINE_CONFIG = "config.json"
TRT_ENGINE = "rank0.engine"
REFERENCE_WEIGHTS = "rank0.safetensors"


def expected_build_config(profile: Profile, build: BuildSection, plan: ProfilePlan) -> dict[str, Any]:
    """The build_config keys an engine built for `profile` must carry (what trtllm_build_argv asks for)."""
    return {
        **asdict(EngineLimits.of_profile(profile)),  # what runtimes read back (EngineLimits.of_engine)
        "max_num_tokens": plan.max_num_tokens,
        "opt_num_tokens": profile.opt_num_tokens,
        "max_beam_width": 1,
        "gather_context_logits": plan.gather_context_logits,
        "plugin_config": {
            "gemm_plugin": build.gemm_plugin,
            "gpt_attention_plugin": "auto",
            "context_fmha": True,
            # trtllm-build writes False with an INT8 KV cache whatever was asked (builder.py build()).
            "use_paged_context_fmha": plan.paged_context_fmha,
            "remove_input_padding": True,
            "multiple_profiles": build.multiple_profiles,
            "paged_kv_cache": build.kv_cache_type == "paged",
        },
    }


# What a trtllm-build engine's config.json must agree on; plugin dtypes are resolved by TensorRT-LLM
# ("auto" -> "float16"), so only the switches are compared.
_CHECKED_KEYS = (*(f.name for f in fields(EngineLimits)), "max_num_tokens", "gather_context_logits")
_CHECKED_PLUGIN_KEYS = ("use_paged_context_fmha", "remove_input_padding", "multiple_profiles")


def supports_chunked_context(engine_config: dict[str, Any]) -> bool:
    """Chunked context needs paged context FMHA, which the engine's own build_config records
    (trtllm-build switches it off with an INT8 KV cache): what runtimes and Triton may enable."""
    plugins = engine_config.get("build_config", {}).get("plugin_config") or {}
    return bool(plugins.get("use_paged_context_fmha", False))


def read_engine_config(engine_dir: Path) -> dict[str, Any]:
    path = engine_dir / ENGINE_CONFIG
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            "no engine config.json here", path=engine_dir, hint="point at a build artifact's engine/"
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", path=path) from None
    for key in ("pretrained_config", "build_config"):
        if not isinstance(data.get(key), dict):
            raise InputError(f"'{key}' is missing: not a TensorRT-LLM engine config", path=path)
    return data


def read_engine_limits(engine_dir: Path) -> EngineLimits:
    """The limits the engine in engine_dir was built with."""
    return EngineLimits.of_engine(read_engine_config(engine_dir), source=engine_dir / ENGINE_CONFIG)


def check_built_engine(engine_dir: Path, expected: dict[str, Any], *, stage: str = "build") -> dict[str, Any]:
    """The engine config trtllm-build wrote, refusing one that lacks the engine or ignored a requested limit."""
    if not (engine_dir / TRT_ENGINE).is_file():
        raise StageError(stage, f"trtllm-build exited 0 but wrote no {TRT_ENGINE} in {engine_dir}")
    config = read_engine_config(engine_dir)
    built = config["build_config"]
    wrong = [f"{k} {built.get(k)} != {expected[k]}" for k in _CHECKED_KEYS if built.get(k) != expected[k]]
    plugins = built.get("plugin_config") or {}
    wrong += [
        f"plugin_config.{k} {plugins.get(k)} != {expected['plugin_config'][k]}"
        for k in _CHECKED_PLUGIN_KEYS
        if plugins.get(k) != expected["plugin_config"][k]
    ]
    if wrong:
        raise StageError(stage, f"the engine's build_config differs from the profile: {'; '.join(wrong)}")
    return config


def runtime_limits(
    engine_config: dict[str, Any], engine_dir: Path, max_batch_size: int | None
) -> EngineLimits:
    """The limits a runtime loading this engine enforces: its profile's, with the batch lowered to
    max_batch_size when one is given."""
    limits = EngineLimits.of_engine(engine_config, source=engine_dir / ENGINE_CONFIG)
    if max_batch_size is None:
        return limits
    return replace(limits, max_batch_size=min(max_batch_size, limits.max_batch_size))
