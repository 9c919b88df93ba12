"""What the GPU backends (trtllm-engine, trtllm-pytorch) decide alike: which formats run on a target,
which tasks need which GPU, the container they serve in, and the host facts their bench figures depend
on. Each backend subclasses GpuBackend and adds what differs: build, runner, serving."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pipeline.facts.formats import FormatGap, Precision, unsupported_on_gpu
from pipeline.facts.targets import Target
from pipeline.planning.tasks import ENGINE_STAGES

if TYPE_CHECKING:
    from pipeline.bench.machine import GpuClocks
    from pipeline.bench.memory import MemoryProbe
    from pipeline.execution.resources import TaskResources
    from pipeline.facts.config import PipelineConfig

# What builds or runs a build needs a GPU of the target's type (an engine runs only on the GPU type that
# built it; the PyTorch backend's build loads the model on one); calibration needs one of any type
# (ModelOpt's forward passes; its checkpoint does not depend on the GPU). Everything else needs one CPU.
TARGET_GPU_STAGES = ENGINE_STAGES | {"gate"}
ANY_GPU_STAGES = frozenset({"calibrate"})


class GpuBackend:
    name: ClassVar[str]
    runs_on_gpu: ClassVar[
        str
    ]  # why it needs one, for a target without: "TensorRT engines are built for a GPU"

    def unavailable_on(self, target: Target) -> str | None:
        return self.runs_on_gpu if target.sm is None else None

    def format_problem(self, precision: Precision, kv_cache_dtype: str, target: Target) -> FormatGap | None:
        """The format table's answer for this backend (its column) on the target's architecture."""
        assert target.sm is not None, f"{self.name} does not run on {target.name}"
        gap = unsupported_on_gpu(self.name, precision, kv_cache_dtype, target.sm)
        if gap is None:
            return None
        return FormatGap(gap.part, f"{gap.problem}; target '{target.name}' is sm{target.sm}")

    def task_resources(self, stage: str, target: Target) -> TaskResources:
        from pipeline.execution.resources import TaskResources

        if stage in TARGET_GPU_STAGES:
            return TaskResources(cpus=1, gpus=1, accelerator_type=target.accelerator_type)
        if stage in ANY_GPU_STAGES:
            return TaskResources(cpus=1, gpus=1)
        return TaskResources(cpus=1)

    def container(self, config: PipelineConfig) -> str | None:
        return config.publish.container

    def bench_host_facts(self) -> dict[str, str]:
        """The GPU the figures were measured on (torch is loaded already: the runtime imported it)."""
        import torch

        return {"gpu": torch.cuda.get_device_name(0)} if torch.cuda.is_available() else {}

    def bench_plan_applies(self) -> bool:
        return True  # it runs on the target's GPU, which the plan models

    def bench_gpu_clocks(self) -> tuple[GpuClocks, ...]:
        from pipeline.bench.machine import nvml_gpu_clocks

        return nvml_gpu_clocks()

    def memory_probe(self, *, served: bool) -> MemoryProbe | None:
        from pipeline.bench.memory import NvmlDeviceProbe

        # The device's memory, whoever holds it: a server on the same GPU, or the LLM API's executor in a
        # worker process.
        return NvmlDeviceProbe()
