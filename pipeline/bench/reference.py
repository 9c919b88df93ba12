"""What measured figures are set beside: the plan's ceilings, and one published estimate.

The published estimate (Mistral 7B INT8 on an A100 40GB: about 7 GB of
weights, 117 tokens/s at batch 1, batch 23 fits) is a fixed reference row. It
applies only to that model on that target: elsewhere it is shown, marked as
not applicable, and no ratio is taken against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.bench.memory import MemoryReading
from pipeline.bench.results import BatchRatio, PlanFigures, PublishedEstimate, Ratios, ThroughputPoint
from pipeline.facts.architecture import KNOWN_ARCHITECTURES, Architecture
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.facts.targets import TARGETS
from pipeline.planning.memory import bytes_read_per_token, plan_memory

PUBLISHED_TARGET = "a100-40gb"
# Mistral 7B's shape, by the engine config's names (v0.1 to v0.3 share it; v0.3 only grows the vocabulary).
_MISTRAL_7B = KNOWN_ARCHITECTURES["mistralai/Mistral-7B-v0.3"]
MISTRAL_7B_SHAPE = {
    "hidden_size": _MISTRAL_7B.hidden_size,
    "num_hidden_layers": _MISTRAL_7B.num_hidden_layers,
    "num_key_value_heads": _MISTRAL_7B.num_key_value_heads,
}


def is_mistral_7b(pretrained_config: dict[str, Any]) -> bool:
    return str(pretrained_config.get("architecture", "")).startswith("Mistral") and all(
        pretrained_config.get(k) == v for k, v in MISTRAL_7B_SHAPE.items()
    )


def published_estimate(*, pretrained_config: dict[str, Any], target: str) -> PublishedEstimate:
    return PublishedEstimate(
        model="Mistral 7B",
        precision="INT8",
        target=PUBLISHED_TARGET,
        decode_tokens_per_s=117.0,
        max_batch_size=23,
        weights_gb=7.0,
        source="published estimate: ~7 GB of INT8 weights, ~33 GB headroom, ~117 tokens/s at batch 1, batch 23",
        applies=target == PUBLISHED_TARGET and is_mistral_7b(pretrained_config),
    )


def plan_figures(config: PipelineConfig, arch: Architecture, precision: str, profile: str) -> PlanFigures:
    """The plan's ceilings and estimate for one engine, from the same formulas `trtllm-pipeline plan` shows."""
    target = TARGETS[config.target.gpu]
    plan = plan_memory(
        arch,
        Precision(precision),
        config.quantization.kv_cache_dtype,
        target,
        config.profile(profile),
        paged_context_fmha=config.build.use_paged_context_fmha,
    )
    bandwidth = target.bandwidth_gb_s * 1e9
    return PlanFigures(
        decode_ceiling_tokens_per_s=plan.decode_ceiling_tok_s,
        bytes_read_per_token=bytes_read_per_token(arch, plan.weight_bytes),
        kv_bytes_per_token=plan.kv_bytes_per_token,
        bandwidth_bytes_per_s=bandwidth,
        memory_estimate_bytes=plan.weight_bytes + plan.allowance_bytes + plan.kv_budget_bytes,
        largest_batch_at_max_seq_len=plan.largest_batch,
        source=(
            f"pipeline.planning.memory on {target.name} ({target.bandwidth_gb_s:g} GB/s, {target.memory_gib:g} GiB): "
            "memory = weights + activation allowance + KV budget"
        ),
    )


def ratios(
    *,
    decode_tokens_per_s: float,
    throughput: Sequence[ThroughputPoint],
    memory: MemoryReading | None,
    plan: PlanFigures,
    published: PublishedEstimate,
    precision: str,
) -> Ratios:
    # Process RSS on the CPU target holds the interpreter and torch: no ratio against a GPU estimate.
    memory_comparable = memory is not None and memory.measure == "gpu_device_used"
    return Ratios(
        decode_vs_ceiling=decode_tokens_per_s / plan.decode_ceiling_tokens_per_s,
        throughput_vs_ceiling=tuple(_batch_ratio(plan, p) for p in throughput),
        peak_memory_vs_estimate=(
            memory.peak_bytes / plan.memory_estimate_bytes if memory_comparable else None
        ),
        decode_vs_published=(
            decode_tokens_per_s / published.decode_tokens_per_s
            if published.applies and precision.startswith("int8")
            else None
        ),
    )


def _batch_ratio(plan: PlanFigures, point: ThroughputPoint) -> BatchRatio:
    ceiling = plan.batch_ceiling_tokens_per_s(point.batch_size, point.input_len + point.output_len / 2)
    return BatchRatio(
        batch_size=point.batch_size,
        ceiling_tokens_per_s=ceiling,
        measured_vs_ceiling=point.output_tokens_per_s.median / ceiling,
    )
