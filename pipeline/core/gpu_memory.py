"""GPU memory each torch step takes, and proof that it gave it back before the next step runs.

Calibration and the gate's Hugging Face reference run in the pipeline's own process, and torch's
caching allocator keeps what they freed (about 14.5 GB for Mistral 7B in fp16) unless told to
return it. The build (trtllm-build, a child process) and TensorRT-LLM's KV cache (0.9 of *free*
memory) would then plan on memory that is not free. So each such step runs inside `gpu_step`:
its peak is recorded for its manifest, then its memory is collected and returned to CUDA, and
what torch still holds is checked; a step that could not release it fails there, naming itself,
rather than the next step failing with an out-of-memory error nobody can place.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from pydantic import BaseModel

from pipeline.core.errors import StageError

MIB = 1024**2
# What may stay with torch after a step: cuBLAS keeps a workspace per handle and stream (a few
# MiB each) that empty_cache() does not return; the plan's 1 GiB runtime reserve covers it.
RELEASE_TOLERANCE_BYTES = 256 * MIB


class GpuStepMemory(BaseModel):
    """One step's GPU memory, as torch's allocator saw it (TensorRT-LLM's own buffers are not in it)."""

    step: str
    device: str | None  # the CUDA device's name; None when the step ran without a GPU
    peak_allocated_bytes: int | None = None  # torch.cuda.max_memory_allocated over the step
    peak_reserved_bytes: int | None = None  # the most torch's caching allocator held at once
    left_reserved_bytes: int | None = None  # what torch still held after the step was released


class CudaMemory(Protocol):
    """The part of torch.cuda the proof uses."""

    def is_available(self) -> bool: ...
    def get_device_name(self) -> str: ...
    def reset_peak_memory_stats(self) -> None: ...
    def max_memory_allocated(self) -> int: ...
    def max_memory_reserved(self) -> int: ...
    def memory_reserved(self) -> int: ...
    def empty_cache(self) -> None: ...


def _torch_cuda() -> CudaMemory:
    import torch

    return torch.cuda


@contextmanager
def gpu_step(step: str, records: list[GpuStepMemory], *, stage: str) -> Iterator[None]:
    """Run the body as one GPU step: record its peak into records, then prove its memory was released.

    The body must drop its own references (models, tensors) before it ends; what it returns
    should hold no GPU tensor.
    """
    cuda = _torch_cuda()
    if not cuda.is_available():
        yield
        records.append(GpuStepMemory(step=step, device=None))
        return
    gc.collect()
    cuda.empty_cache()
    cuda.reset_peak_memory_stats()
    yield
    peak_allocated, peak_reserved = cuda.max_memory_allocated(), cuda.max_memory_reserved()
    gc.collect()  # the step's frames are gone; collect what only cycles still hold
    cuda.empty_cache()
    left = cuda.memory_reserved()
    records.append(
        GpuStepMemory(
            step=step,
            device=cuda.get_device_name(),
            peak_allocated_bytes=peak_allocated,
            peak_reserved_bytes=peak_reserved,
            left_reserved_bytes=left,
        )
    )
    if left > RELEASE_TOLERANCE_BYTES:
        raise StageError(
            stage,
            f"{step} still holds {left / MIB:.0f} MiB of GPU memory after it finished (peak "
            f"{peak_reserved / MIB:.0f} MiB): the steps after it would not get the memory the plan gives them",
            hint="something kept a reference to the model or its tensors; rerun with --debug and report it",
        )
