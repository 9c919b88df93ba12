"""GPU steps in the pipeline's own process (calibration, the gate's models) record their peak and must
give their memory back before the next step: torch's caching allocator keeps what a step freed until
empty_cache(), and a live reference keeps it for good.

The stand-in for torch.cuda follows the caching allocator's accounting: a block freed by its tensor
stays reserved (cached) until empty_cache() returns it; max_memory_* are peaks since the last reset.
"""

from __future__ import annotations

import pytest

from pipeline.core import gpu_memory
from pipeline.core.errors import StageError
from pipeline.core.gpu_memory import GpuStepMemory, gpu_step

MIB = 1024**2


class Block:
    """A tensor's memory: freed (back to the cache) when the object is collected."""

    def __init__(self, cuda: FakeCuda, size: int) -> None:
        self.cuda, self.size = cuda, size
        cuda.allocated += size
        cuda.reserved = max(cuda.reserved, cuda.allocated)
        cuda.peak_allocated = max(cuda.peak_allocated, cuda.allocated)
        cuda.peak_reserved = max(cuda.peak_reserved, cuda.reserved)

    def __del__(self) -> None:
        self.cuda.allocated -= self.size


class FakeCuda:
    def __init__(self) -> None:
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0

    def is_available(self) -> bool:
        return True

    def get_device_name(self) -> str:
        return "NVIDIA A100-SXM4-40GB"

    def reset_peak_memory_stats(self) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def max_memory_allocated(self) -> int:
        return self.peak_allocated

    def max_memory_reserved(self) -> int:
        return self.peak_reserved

    def memory_reserved(self) -> int:
        return self.reserved

    def empty_cache(self) -> None:
        self.reserved = self.allocated


@pytest.fixture
def cuda(monkeypatch) -> FakeCuda:
    fake = FakeCuda()
    monkeypatch.setattr(gpu_memory, "_torch_cuda", lambda: fake)
    return fake


def test_a_step_that_frees_its_tensors_is_recorded_and_returns_the_cache(cuda):
    records: list[GpuStepMemory] = []
    with gpu_step("calibration", records, stage="calibrate"):
        model = Block(cuda, 14_500 * MIB)  # Mistral 7B in fp16
        activations = Block(cuda, 2_000 * MIB)
        del activations, model
        assert cuda.reserved == 16_500 * MIB  # freed, but still cached by torch
    (record,) = records
    assert record.peak_allocated_bytes == record.peak_reserved_bytes == 16_500 * MIB
    assert record.left_reserved_bytes == 0 and cuda.reserved == 0  # given back before the next step
    assert record.device == "NVIDIA A100-SXM4-40GB"


def test_a_step_that_keeps_its_model_alive_fails_naming_itself(cuda):
    kept = []
    records: list[GpuStepMemory] = []
    with pytest.raises(StageError, match=r"gate: reference still holds 14500 MiB of GPU memory"):
        with gpu_step("gate: reference", records, stage="gate"):
            kept.append(Block(cuda, 14_500 * MIB))
    assert records[0].left_reserved_bytes == 14_500 * MIB  # recorded before refusing


def test_without_a_gpu_the_step_is_recorded_as_such(monkeypatch):
    records: list[GpuStepMemory] = []
    with gpu_step("calibration", records, stage="calibrate"):
        pass
    assert records == [GpuStepMemory(step="calibration", device=None)]
