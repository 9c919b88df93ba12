"""The machine a bench ran on and how busy it was, read before and after the measurements.

A figure from a machine other work keeps busy is slower and wider than the
engine's own; the report says so beside the figures instead of leaving a reader
to guess. CPU facts come from the OS (`os.getloadavg`, `/proc/cpuinfo` where
Linux has it); GPU clocks come from the backend (NVML on a GPU target), since a
throttled clock slows a GPU as other load slows a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

PROC_CPUINFO = Path("/proc/cpuinfo")


class GpuClocks(BaseModel):
    model_config = ConfigDict(frozen=True)
    index: int  # NVML's index (PCI bus order)
    name: str
    sm_mhz: int
    memory_mhz: int
    sm_max_mhz: int | None  # None where NVML does not report it


class MachineSnapshot(BaseModel):
    """What the OS and the GPU driver said at one moment."""

    model_config = ConfigDict(frozen=True)
    load_1_5_15: tuple[float, float, float] | None  # runnable tasks averaged over 1, 5, 15 minutes
    cpu_mhz: float | None  # mean over cores of /proc/cpuinfo's "cpu MHz"
    gpu_clocks: tuple[GpuClocks, ...] = ()


class MachineState(BaseModel):
    model_config = ConfigDict(frozen=True)
    cpu_count: int
    cpu_model: str | None
    before: MachineSnapshot
    after: MachineSnapshot
    source: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def busy_before(self) -> bool:
        """A 1-minute load of at least the CPU count means every core already had a runnable task on
        average before the bench started (the definition of the load average): the bench shared them."""
        load = self.before.load_1_5_15
        return load is not None and load[0] >= self.cpu_count


MACHINE_SOURCE = (
    "os.getloadavg() and /proc/cpuinfo (model name, mean cpu MHz) before the first engine and after the "
    "last; GPU clocks from the backend (NVML where it reads a GPU)"
)


def _cpuinfo(path: Path) -> tuple[str | None, float | None]:
    try:
        text = path.read_text()
    except OSError:  # no procfs (macOS): the load average alone
        return None, None
    model = None
    mhz = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "cpu MHz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
    return model, (sum(mhz) / len(mhz) if mhz else None)


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:  # a platform without one
        return None


def snapshot(
    gpu_clocks: Callable[[], tuple[GpuClocks, ...]],
    *,
    cpuinfo: Path = PROC_CPUINFO,
    loadavg: Callable[[], tuple[float, float, float] | None] = _loadavg,
) -> MachineSnapshot:
    return MachineSnapshot(load_1_5_15=loadavg(), cpu_mhz=_cpuinfo(cpuinfo)[1], gpu_clocks=gpu_clocks())


def machine_state(
    before: MachineSnapshot, after: MachineSnapshot, *, cpuinfo: Path = PROC_CPUINFO
) -> MachineState:
    return MachineState(
        cpu_count=os.cpu_count() or 1,
        cpu_model=_cpuinfo(cpuinfo)[0],
        before=before,
        after=after,
        source=MACHINE_SOURCE,
    )


def nvml_gpu_clocks(nvml: Any | None = None) -> tuple[GpuClocks, ...]:
    """Current SM and memory clocks of every GPU NVML sees; () without NVML or a driver."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return ()
    try:
        nvml.nvmlInit()
        clocks = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            try:
                sm_max = int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM))
            except nvml.NVMLError:
                sm_max = None
            name = nvml.nvmlDeviceGetName(handle)
            clocks.append(
                GpuClocks(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    sm_mhz=int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
                    memory_mhz=int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)),
                    sm_max_mhz=sm_max,
                )
            )
        return tuple(clocks)
    except nvml.NVMLError:
        return ()
