"""What the GPU backends (trtllm-engine, trtllm-pytorch) decide alike: which formats run on a target, and
the host facts their bench figures depend on."""

from __future__ import annotations

from pipeline.facts.formats import FormatGap, Precision, unsupported_on_gpu
from pipeline.facts.targets import Target


def gpu_format_problem(
    backend: str, precision: Precision, kv_cache_dtype: str, target: Target
) -> FormatGap | None:
    """The format table's answer for `backend` (its column) on the target's architecture, naming the target."""
    assert target.sm is not None, f"{backend} does not run on {target.name}"
    gap = unsupported_on_gpu(backend, precision, kv_cache_dtype, target.sm)
    if gap is None:
        return None
    return FormatGap(gap.part, f"{gap.problem}; target '{target.name}' is sm{target.sm}")


def gpu_host_facts() -> dict[str, str]:
    """The GPU the figures were measured on (torch is loaded already: the runtime imported it)."""
    import torch

    return {"gpu": torch.cuda.get_device_name(0)} if torch.cuda.is_available() else {}
