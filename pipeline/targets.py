"""The GPUs the pipeline can build for, and the CPU reference target.

Figures are the vendors' datasheet numbers (dense, no sparsity). Memory is the
card's nominal capacity in GiB, as the memory plan uses it; CUDA reports a little
less (39.4 GiB on an A100 40GB), which the plan's 1 GiB runtime reserve covers.
The cpu-reference row is a host RAM budget and a typical DDR bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    sm: int | None  # compute capability x10 (80 = sm80); None for the CPU target
    memory_gib: float
    bandwidth_gb_s: float  # GB/s, 1e9 bytes
    fp16_tflops: float
    int8_tops: float
    # Which precisions a target runs follows from `sm` and each format's row (pipeline.formats).

    @property
    def is_gpu(self) -> bool:
        return self.sm is not None


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("a100-40gb", "NVIDIA A100 40GB (SXM4)", 80, 40.0, 1555.0, 312.0, 624.0),
        Target("a100-80gb", "NVIDIA A100 80GB (SXM4)", 80, 80.0, 2039.0, 312.0, 624.0),
        Target("h100-80gb", "NVIDIA H100 80GB (SXM5)", 90, 80.0, 3350.0, 989.0, 1979.0),
        Target("h200", "NVIDIA H200 141GB (SXM)", 90, 141.0, 4800.0, 989.0, 1979.0),
        Target("l4", "NVIDIA L4 24GB", 89, 24.0, 300.0, 121.0, 242.0),
        Target("a10g", "NVIDIA A10G 24GB", 86, 24.0, 600.0, 70.0, 140.0),
        Target(
            "cpu-reference",
            "PyTorch CPU reference runtime (runs the exported checkpoint; CI and demo)",
            None,
            8.0,
            20.0,
            0.5,
            0.5,
        ),
    )
}
