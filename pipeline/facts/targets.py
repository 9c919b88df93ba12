"""The hardware the pipeline can build for: the GPUs, and the host CPU.

A target is only hardware; which runtimes run on it follows from the config's
[[backends]] (pipeline.backends: on the cpu target the reference runtime plays
each), and which precisions each runs from its column of each format's row
(pipeline.facts.formats).

Figures are the vendors' datasheet numbers (dense, no sparsity). Memory is the
card's nominal capacity in GiB, as the memory plan uses it; CUDA reports a little
less (39.4 GiB on an A100 40GB), which the plan's 1 GiB runtime reserve covers.
The cpu row is a host RAM budget and a typical DDR bandwidth: what the plan counts
for the reference runtime.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    sm: int | None  # compute capability x10 (80 = sm80); None: the host CPU, no GPU architecture
    memory_gib: float
    bandwidth_gb_s: float  # GB/s, 1e9 bytes
    fp16_tflops: float
    int8_tops: float
    # The label Ray gives nodes with this GPU (`accelerator_type:<label>`), which the Ray executor asks
    # for: Ray reads it off the NVML name of a node's first GPU ("NVIDIA A100-SXM4-40GB" -> "A100";
    # ray/_private/accelerators/nvidia_gpu.py, Ray 2.60.0). Ray does not tell the A100 sizes apart:
    # "A100-80G" (ray.util.accelerators) is a label a node must be started with by hand.
    accelerator_type: str | None


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("a100-40gb", "NVIDIA A100 40GB (SXM4)", 80, 40.0, 1555.0, 312.0, 624.0, "A100"),
        Target("a100-80gb", "NVIDIA A100 80GB (SXM4)", 80, 80.0, 2039.0, 312.0, 624.0, "A100-80G"),
        Target("h100-80gb", "NVIDIA H100 80GB (SXM5)", 90, 80.0, 3350.0, 989.0, 1979.0, "H100"),
        Target("h200", "NVIDIA H200 141GB (SXM)", 90, 141.0, 4800.0, 989.0, 1979.0, "H200"),
        Target("l4", "NVIDIA L4 24GB", 89, 24.0, 300.0, 121.0, 242.0, "L4"),
        Target("a10g", "NVIDIA A10G 24GB", 86, 24.0, 600.0, 70.0, 140.0, "A10G"),
        Target(
            "cpu",
            "The host CPU (the reference runtime runs the exported checkpoint there; CI and demo)",
            None,
            8.0,
            20.0,
            0.5,
            0.5,
            None,
        ),
    )
}

# Before targets and backends were two fields, the CPU runtime was a target of this name; a config
# that still says so means the reference backend on `cpu` (pipeline.facts.config reads it so).
LEGACY_CPU_TARGET = "cpu-reference"
