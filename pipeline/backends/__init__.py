"""The runtimes the pipeline builds for. A config lists backends by the GPU runtime its artifacts are
for (`[[backends]] name`: trtllm-engine, trtllm-pytorch); on each target one runtime here plays it
(`Backend.plays`): the GPU backend itself, or on the CPU the reference runtime.

    base.py           the Backend protocol (what differs between runtimes), the runner API,
                      build_info.json (EngineInfo): read it first to see what each method is for
    trtllm_engine/    `trtllm-engine`: TensorRT-LLM 1.2.1 engines, Triton's tensorrtllm backend
    trtllm_pytorch/   `trtllm-pytorch`: TensorRT-LLM 1.2.1's PyTorch backend (LLM API), no compile step
    gpu.py            GpuBackend: what the GPU backends decide alike (formats, task resources, container, bench host)
    reference.py      `reference`: the PyTorch reference runtime on the CPU playing trtllm-engine
                      (the TensorRT-LLM checkpoint; CI and the demo)
    reference_pytorch.py  `reference-pytorch`: the same runtime playing trtllm-pytorch (the unified
                      Hugging Face checkpoint and its LLM API options)

A target (pipeline.facts.targets) is only hardware; the backend is the runtime on it. Which backend
may run on which target is the backend's to say, and a target's default backend is the first one
listed here that runs on it (a GPU: trtllm-engine; the CPU: reference, playing trtllm-engine).
Adding a backend is one module and one entry in BACKENDS.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends.base import BUILD_INFO, Backend, EngineInfo, EngineRunner, read_engine_info
from pipeline.backends.reference import ReferenceBackend
from pipeline.backends.reference_pytorch import ReferencePytorchBackend
from pipeline.backends.trtllm_engine import TrtllmEngineBackend
from pipeline.backends.trtllm_pytorch import TrtllmPytorchBackend
from pipeline.core.errors import InputError
from pipeline.facts.targets import TARGETS, Target

if TYPE_CHECKING:
    from pipeline.facts.config import PipelineConfig
    from pipeline.runtime.limits import EngineLimits

# In order of preference: a target's default backend is the first that runs on it.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (TrtllmEngineBackend(), TrtllmPytorchBackend(), ReferenceBackend(), ReferencePytorchBackend())
}
# What a config's [[backends]] may name: the GPU runtimes the artifacts are for.
PLAYED: tuple[str, ...] = tuple(dict.fromkeys(b.plays for b in BACKENDS.values()))


def default_backend(target: Target) -> Backend:
    return next(b for b in BACKENDS.values() if b.unavailable_on(target) is None)


def runtime_for(name: str, target: Target) -> Backend:
    """The backend that plays `name` (a config's [[backends]] name) on `target`."""
    return next(b for b in BACKENDS.values() if b.plays == name and b.unavailable_on(target) is None)


def backend_of(config: PipelineConfig, name: str) -> Backend:
    """The runtime that plays the config's backend `name` on the config's target."""
    return runtime_for(name, TARGETS[config.target.gpu])


def targets_of(backend: Backend) -> list[Target]:
    """The targets a backend runs on."""
    return [t for t in TARGETS.values() if backend.unavailable_on(t) is None]


def engine_backend(engine_dir: Path) -> tuple[Backend, EngineInfo]:
    """The backend that built a build artifact's engine/ folder (its build_info.json says which)."""
    info = read_engine_info(engine_dir)
    backend = BACKENDS.get(info.backend)
    if backend is None:
        raise InputError(
            f"built by backend '{info.backend}', which this pipeline does not know (known: {', '.join(BACKENDS)})",
            path=engine_dir / BUILD_INFO,
            hint="load it with the pipeline version that built it, or rebuild it",
        )
    return backend, info


def engine_limits(engine_dir: Path) -> EngineLimits:
    """The limits the engine in engine_dir was built with, read by the backend that built it."""
    return engine_backend(engine_dir)[0].limits(engine_dir)


def load_runner(engine_dir: Path, *, max_batch_size: int | None = None) -> EngineRunner:
    """A runner for a build artifact's engine/ folder, loaded by the backend its build_info.json names,
    enforcing the profile's limits.

    max_batch_size lowers the batch the runtime takes (the gate scores in small batches); on a GPU it
    also sizes the KV cache to that batch instead of most of the free memory.
    """
    backend, info = engine_backend(engine_dir)
    return backend.load_runner(engine_dir, info, max_batch_size=max_batch_size)
