"""The trtllm-build command line for one profile. Pure: tested flag by flag against 1.2.1's parser.

Flag names and value spellings follow TensorRT-LLM 1.2.1:
tensorrt_llm/commands/build.py (parse_arguments) for the shape flags, the KV
cache type, timing caches, workers, logits and --visualize_network;
tensorrt_llm/plugin/plugin.py (PluginConfig fields listed in cli_plugin_args,
added by add_plugin_argument) for the plugin and feature switches, which take
a dtype/"auto"/"disable" or "enable"/"disable".
"""

from __future__ import annotations

from pathlib import Path

from pipeline.facts.config import BuildSection, Profile
from pipeline.planning.memory import ProfilePlan


def _switch(on: bool) -> str:
    return "enable" if on else "disable"


def trtllm_build_argv(
    checkpoint_dir: Path,
    output_dir: Path,
    profile: Profile,
    build: BuildSection,
    plan: ProfilePlan,
    input_timing_cache: Path,
    output_timing_cache: Path,
    *,
    workers: int = 1,
    visualize_dir: Path | None = None,
    executable: str = "trtllm-build",
) -> list[str]:
    """argv for `trtllm-build` building `profile` from `checkpoint_dir` into `output_dir`."""
    argv = [
        executable,
        "--checkpoint_dir", str(checkpoint_dir),
        "--output_dir", str(output_dir),
        "--max_batch_size", str(profile.max_batch_size),
        "--max_input_len", str(profile.max_input_len),
        # Always explicit: left unset, TensorRT-LLM takes max_position_embeddings (32768 for Mistral).
        "--max_seq_len", str(profile.max_seq_len),
        "--max_num_tokens", str(plan.max_num_tokens),
    ]  # fmt: skip
    if profile.opt_num_tokens is not None:
        # The config refuses it with multiple_profiles (trtllm-build raises on the pair).
        argv += ["--opt_num_tokens", str(profile.opt_num_tokens)]
    argv += [
        "--kv_cache_type", build.kv_cache_type,
        "--gemm_plugin", build.gemm_plugin,
        "--gpt_attention_plugin", "auto",
        "--context_fmha", "enable",
        # The plan's value: the config's, off with an INT8 KV cache (as trtllm-build would switch it).
        "--use_paged_context_fmha", _switch(plan.paged_context_fmha),
        "--remove_input_padding", "enable",
        "--multiple_profiles", _switch(build.multiple_profiles),
        "--workers", str(workers),
        # Two files: the shared cache is only read (a missing one is skipped); the build's own
        # cache is written into its artifact, and shared by the driver after the commit.
        "--input_timing_cache", str(input_timing_cache),
        "--output_timing_cache", str(output_timing_cache),
        "--log_level", "info",
    ]  # fmt: skip
    if plan.gather_context_logits:
        # Only a gate engine: every response of an engine built so carries the prompt's full logits.
        argv += ["--gather_context_logits"]
    if visualize_dir is not None:
        argv += ["--visualize_network", str(visualize_dir)]
    return argv
