"""Peak memory while an engine runs: GPU device memory on a GPU host, process RSS on the CPU target.

TensorRT-LLM allocates its engine, activations and paged KV cache outside
torch's caching allocator, so `torch.cuda.max_memory_allocated` misses most of
it; the GPU probe samples the device's used memory through NVML in a thread and
keeps torch's figure beside it. On the CPU the same slot holds the peak
resident set of this process (interpreter and torch included), labelled so, and
is not comparable with a GPU estimate. Which probe measures an engine is its
backend's choice (pipeline.backends).
"""

from __future__ import annotations

import os
import re
import resource
import sys
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from pipeline.core.errors import MissingDependencyError
from pipeline.facts.container import SERVING_CONTAINER


class UtilizationReading(BaseModel):
    """GPU utilization over the probed span, from NVML samples taken beside the memory samples."""

    model_config = ConfigDict(frozen=True)
    mean_percent: float
    max_percent: int
    samples: int
    source: str


class MemoryReading(BaseModel):
    model_config = ConfigDict(frozen=True)
    measure: str  # what peak_bytes is: "gpu_device_used" or "process_peak_rss"
    peak_bytes: int
    baseline_bytes: int | None = None  # device memory already used when the probe started (GPU)
    torch_max_allocated_bytes: int | None = None  # torch's allocator only (GPU)
    source: str  # what was read, and how
    gpu_utilization: UtilizationReading | None = None  # GPU only, where NVML reports it


class MemoryProbe(Protocol):
    def start(self) -> None: ...

    def stop(self) -> MemoryReading: ...


_HWM = re.compile(r"^VmHWM:\s+(\d+) kB$", re.MULTILINE)


class ProcessRssProbe:
    """Peak resident set size of this process over the probed span (Linux: VmHWM, reset at start)."""

    def __init__(self, proc_self: str = "/proc/self") -> None:
        self._proc_self = proc_self
        self._since_start_of_process = False

    def start(self) -> None:
        try:
            # "5" resets the peak RSS counter (Linux >= 4.0), so each span gets its own peak.
            with open(f"{self._proc_self}/clear_refs", "w") as f:
                f.write("5")
            self._since_start_of_process = False
        except OSError:
            self._since_start_of_process = True

    def stop(self) -> MemoryReading:
        try:
            with open(f"{self._proc_self}/status") as f:
                match = _HWM.search(f.read())
        except OSError:
            match = None
        if match is not None:
            peak = int(match.group(1)) * 1024
        else:  # no procfs (macOS): the lifetime peak; ru_maxrss is in bytes there, KiB on Linux
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = maxrss if sys.platform == "darwin" else maxrss * 1024
            self._since_start_of_process = True
        source = (
            "peak RSS (VmHWM) of the benchmarking process (CPU target; includes the interpreter and torch)"
        )
        if self._since_start_of_process:
            source += "; since process start (the counter could not be reset)"
        return MemoryReading(measure="process_peak_rss", peak_bytes=peak, source=source)


class NvmlDeviceProbe:
    """Device memory used, sampled every `interval_s` by a thread, plus torch's own peak."""

    def __init__(self, interval_s: float = 0.005) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise MissingDependencyError(
                "GPU memory measurement needs nvidia-ml-py (import pynvml)",
                hint=f"pip install nvidia-ml-py, or run inside {SERVING_CONTAINER.tag}",
            ) from exc
        self._nvml = pynvml
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0
        self._baseline = 0
        self._utilization: list[int] = []
        try:
            pynvml.nvmlInit()
            self._handle = _visible_device_handle(pynvml)
        except pynvml.NVMLError as exc:
            raise MissingDependencyError(
                f"GPU memory measurement needs a visible NVIDIA GPU and driver (NVML: {exc})",
                hint=f"run on the GPU host, inside {SERVING_CONTAINER.tag} started with --gpus",
            ) from None

    def _used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._peak = max(self._peak, self._used())
            percent = gpu_utilization_percent(self._nvml, self._handle)
            if percent is not None:
                self._utilization.append(percent)

    def start(self) -> None:
        _reset_torch_peak()
        self._baseline = self._peak = self._used()
        self._utilization = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="nvml-memory-probe", daemon=True)
        self._thread.start()

    def stop(self) -> MemoryReading:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, self._used())
        return MemoryReading(
            measure="gpu_device_used",
            peak_bytes=self._peak,
            baseline_bytes=self._baseline,
            torch_max_allocated_bytes=_torch_peak(),
            source=(
                f"device memory used (NVML, sampled every {self._interval_s * 1000:g} ms in a thread), "
                "all processes; TensorRT-LLM reserves a fraction of the free memory for the paged KV "
                "cache when it loads, so this includes that reservation"
            ),
            gpu_utilization=utilization_reading(self._utilization),
        )


def gpu_utilization_percent(nvml: Any, handle: Any) -> int | None:
    """NVML's `gpu` utilization: the percent of its last sample period (1/6 s to 1 s, by product) in
    which a kernel ran on the device (nvmlUtilization_t, NVML API reference); None where unsupported."""
    try:
        return int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nvml.NVMLError:
        return None


def utilization_reading(samples: Sequence[int]) -> UtilizationReading | None:
    if not samples:
        return None
    return UtilizationReading(
        mean_percent=sum(samples) / len(samples),
        max_percent=max(samples),
        samples=len(samples),
        source=(
            "NVML nvmlDeviceGetUtilizationRates().gpu, sampled with the memory: percent of each sample "
            "period (1/6 s to 1 s by product) in which a kernel ran, any process"
        ),
    )


def _visible_device_handle(pynvml, environ=os.environ, cuda_uuid=None):
    """The NVML handle of the GPU CUDA calls device 0 here.

    NVML numbers GPUs by PCI bus and ignores CUDA_VISIBLE_DEVICES; CUDA numbers them fastest first
    unless CUDA_DEVICE_ORDER=PCI_BUS_ID, and CUDA_VISIBLE_DEVICES may list indices, UUIDs or UUID
    prefixes. So the device is looked up by the UUID CUDA reports for it.
    """
    uuid = (cuda_uuid or _cuda_device_uuid)()
    if uuid is not None:
        return pynvml.nvmlDeviceGetHandleByUUID(uuid)
    first = environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    if first.startswith(("GPU-", "MIG-")) and first.count("-") >= 5:  # a full UUID, not a prefix
        return pynvml.nvmlDeviceGetHandleByUUID(first)
    if first.isdigit() and environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        return pynvml.nvmlDeviceGetHandleByIndex(int(first))  # both count by bus then
    raise MissingDependencyError(
        f"cannot tell which GPU CUDA_VISIBLE_DEVICES={first!r} is to NVML without asking CUDA (torch)",
        hint="give CUDA_VISIBLE_DEVICES a full GPU UUID (nvidia-smi -L), or set CUDA_DEVICE_ORDER=PCI_BUS_ID",
    )


def _cuda_device_uuid() -> str | None:
    """NVML's spelling ("GPU-<uuid>") of the UUID of CUDA's current device, or None without torch/CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def _reset_torch_peak() -> None:
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.reset_peak_memory_stats()


def _torch_peak() -> int | None:
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        return int(sys.modules["torch"].cuda.max_memory_allocated())
    return None
