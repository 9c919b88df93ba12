"""What the build host has (TensorRT-LLM, TensorRT, CUDA, GPUs, RAM, disk) and whether that is enough.

`probe_environment` asks a child Python (the one the pipeline runs in) to
import tensorrt_llm, tensorrt and torch and report their versions and the
visible GPUs; `preflight_problems` is the pure check of that report against
the target and the plan, so every refusal is unit-tested without a GPU.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipeline.core.errors import MissingDependencyError, ToolFailedError
from pipeline.core.tools import ToolRunner, run_tool
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.facts.targets import Target
from pipeline.planning.memory import GIB, ProfilePlan

# The probe writes its report to the file named by argv[1]: tensorrt_llm prints a banner on import,
# so stdout is not a clean channel.
# A driver too old for the image's CUDA shows only as no GPU (device_count() is 0), so the probe also
# keeps why CUDA would not initialise and the kernel module's version line.
PROBE_CODE = """
import json, shutil, sys
report = {"trtllm_build": shutil.which("trtllm-build"), "gpus": []}
try:
    with open("/proc/driver/nvidia/version") as f:
        report["nvidia_version"] = f.readline().strip()
except OSError:
    pass
try:
    import tensorrt_llm
except ImportError:
    report["tensorrt_llm"] = None
else:
    import tensorrt, torch
    report.update(
        tensorrt_llm=tensorrt_llm.__version__,
        tensorrt=tensorrt.__version__,
        cuda=torch.version.cuda,
        torch=torch.__version__,
    )
    try:
        torch.cuda.init()
    except Exception as exc:
        report["cuda_error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        props = torch.cuda.get_device_properties(i)
        report["gpus"].append({"name": props.name, "sm": major * 10 + minor, "memory_bytes": props.total_memory})
with open(sys.argv[1], "w") as f:
    json.dump(report, f)
"""

# trtllm-build holds the checkpoint's weights and the TensorRT network in host memory at once.
BUILD_RAM_FACTOR = 2
BUILD_RAM_EXTRA_BYTES = 2 * GIB  # Python, TensorRT builder, CUDA host allocations
ENGINE_DISK_FACTOR = 1.1  # an engine is about its weights' size
DISK_EXTRA_BYTES = 1 * GIB  # timing cache, logs, config


# Why a build refuses a GPU of another architecture than the target's (--allow-arch-mismatch overrides).
ENGINE_ARCH_REASON = "an engine runs only on the architecture that built it"


class GpuInfo(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    sm: int
    memory_bytes: int


class BuildEnvironment(BaseModel):
    """The probe's report: what the build would run with."""

    model_config = ConfigDict(frozen=True)
    tensorrt_llm: str | None  # None: not installed
    tensorrt: str | None = None
    cuda: str | None = None
    torch: str | None = None
    trtllm_build: str | None
    gpus: tuple[GpuInfo, ...]
    driver: str | None = None  # the NVIDIA kernel module's version; None: no driver loaded
    cuda_error: str | None = None  # why CUDA would not initialise, if it would not


# What the kernel module writes first in /proc/driver/nvidia/version: "NVRM version: " and its ID
# (kernel-open/nvidia/nv-procfs.c nv_procfs_read_version, NVIDIA/open-gpu-kernel-modules@1739a20e),
# "NVIDIA UNIX x86_64 Kernel Module  535.104.05  <date>" or, for the open modules,
# "NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build ...".
_DRIVER_VERSION = re.compile(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)")


def driver_version(nvrm_line: str | None) -> str | None:
    """The driver version in the first line of /proc/driver/nvidia/version, or None."""
    match = _DRIVER_VERSION.search(nvrm_line or "")
    return match.group(1) if match else None


def _older(version: str, than: str) -> bool:
    return tuple(map(int, version.split("."))) < tuple(map(int, than.split(".")))


def no_gpu_problem(env: BuildEnvironment) -> str:
    """Why no GPU is visible, as far as the probe can tell: no driver, one older than the image's CUDA
    needs, or a container started without the GPUs."""
    cuda = f" (CUDA: {env.cuda_error.split('. ')[0]})" if env.cuda_error else ""
    image = SERVING_CONTAINER
    need = (
        f"{image.tag} is CUDA {image.cuda} and needs NVIDIA driver {image.driver} or newer (on a "
        "data-center GPU an older driver branch that CUDA forward compatibility supports also works: "
        "docs.nvidia.com/deploy/cuda-compatibility)"
    )
    if env.driver is None:
        return f"no CUDA GPU is visible and no NVIDIA driver is loaded{cuda}: {need}"
    if _older(env.driver, image.driver):
        return f"no CUDA GPU is visible: the host's NVIDIA driver is {env.driver}{cuda}; {need}"
    return f"no CUDA GPU is visible (NVIDIA driver {env.driver}){cuda}: start the container with --gpus all"


def _missing(what: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"{what}: GPU builds run inside {SERVING_CONTAINER.tag} (TensorRT-LLM {SERVING_CONTAINER.tensorrt_llm}) on a GPU host",
        hint="build that image with docker/Dockerfile, or set target.gpu = 'cpu' to build for the CPU (reference backend)",
    )


def probe_environment(log_path: Path, *, runner: ToolRunner = subprocess.run) -> BuildEnvironment:
    """Ask a child Python for TensorRT-LLM's, TensorRT's and CUDA's versions, the visible GPUs, the
    driver's version and why CUDA would not initialise."""
    report_path = log_path.with_name(log_path.name + ".probe.json")
    try:
        run_tool(
            [sys.executable, "-c", PROBE_CODE, str(report_path)],
            stage="build",
            log_path=log_path,
            runner=runner,
        )
        data = json.loads(report_path.read_text())
        data["driver"] = driver_version(data.pop("nvidia_version", None))
    except ToolFailedError:
        raise _missing(f"TensorRT-LLM, TensorRT or torch fails to import (log: {log_path})") from None
    finally:
        report_path.unlink(missing_ok=True)
    return BuildEnvironment.model_validate(data)


def available_ram_bytes(meminfo: str) -> int:
    """MemAvailable from the text of /proc/meminfo."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no MemAvailable line in /proc/meminfo")


def host_resources(disk_path: Path) -> tuple[int, int]:
    """(available RAM, free disk at disk_path) in bytes."""
    ram = available_ram_bytes(Path("/proc/meminfo").read_text())
    return ram, shutil.disk_usage(disk_path).free


def build_needs(plan: ProfilePlan) -> tuple[int, int]:
    """(host RAM, disk) a trtllm-build of this plan's weights needs, in bytes."""
    ram = BUILD_RAM_FACTOR * plan.weight_bytes + BUILD_RAM_EXTRA_BYTES
    disk = int(ENGINE_DISK_FACTOR * plan.weight_bytes) + DISK_EXTRA_BYTES
    return ram, disk


def preflight_problems(
    env: BuildEnvironment,
    target: Target,
    *,
    allow_arch_mismatch: bool,
    ram_needed: int,
    ram_available: int,
    disk_needed: int,
    disk_free: int,
    needs_trtllm_build: bool = True,
    arch_reason: str = ENGINE_ARCH_REASON,
) -> list[str]:
    """Every reason this host cannot build for `target`; empty when it can. The PyTorch backend's
    build compiles nothing (no trtllm-build), and holds its GPU to the target for the memory plan."""
    if env.tensorrt_llm is None:
        return ["TensorRT-LLM is not installed"]
    problems = []
    if env.tensorrt_llm != SERVING_CONTAINER.tensorrt_llm:
        problems.append(
            f"TensorRT-LLM {env.tensorrt_llm} is installed, the pipeline is pinned to {SERVING_CONTAINER.tensorrt_llm}"
        )
    if needs_trtllm_build and env.trtllm_build is None:
        problems.append("the trtllm-build command is not on PATH")
    if not env.gpus:
        problems.append(no_gpu_problem(env))
    elif not allow_arch_mismatch:
        for i, gpu in enumerate(env.gpus):
            if gpu.sm != target.sm:
                problems.append(
                    f"GPU {i} ({gpu.name}) is sm{gpu.sm} but target {target.name} is sm{target.sm}: {arch_reason} "
                    "(pass --allow-arch-mismatch to build anyway)"
                )
    if ram_available < ram_needed:
        problems.append(
            f"the build needs {ram_needed / GIB:.1f} GiB of free host RAM, {ram_available / GIB:.1f} GiB is available"
        )
    if disk_free < disk_needed:
        problems.append(
            f"the build needs {disk_needed / GIB:.1f} GiB of free disk, {disk_free / GIB:.1f} GiB is free"
        )
    return problems


def require_build_host(problems: list[str]) -> None:
    """Raise the first preflight problem as a one-line MissingDependencyError (exit 3)."""
    if problems:
        raise _missing(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
