"""`bench --nsys`: the same bench run, recorded by Nsight Systems.

The bench command runs itself again as the child of `nsys profile` (nsys
records a process it launches), with the same arguments less `--nsys`; the
report lands beside bench.json as bench.nsys-rep. Pure apart from the PATH
look-up, which is injectable.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.core.errors import MissingDependencyError

NSYS_FLAG = "--nsys"
REPORT_STEM = "bench"  # nsys appends .nsys-rep
REPORT_NAME = f"{REPORT_STEM}.nsys-rep"
# CUDA API and kernels, NVTX ranges (TensorRT-LLM marks its steps), OS runtime calls.
TRACE = "cuda,nvtx,osrt"


def find_nsys(which: Callable[[str], str | None] = shutil.which) -> str:
    found = which("nsys")
    if found is None:
        raise MissingDependencyError(
            f"{NSYS_FLAG} records the run with Nsight Systems, and no `nsys` is on PATH",
            hint="install Nsight Systems (or run where it is installed) and put nsys on PATH, or drop --nsys",
        )
    return found


def profiled_argv(nsys: str, out_dir: Path, bench_args: Sequence[str]) -> list[str]:
    """`nsys profile` of this bench command with `bench_args` (the CLI's own arguments) less --nsys.

    Long options take their value after `=` (Nsight Systems user guide, "Command Line Options").
    """
    child = [sys.executable, "-m", "pipeline", *(a for a in bench_args if a != NSYS_FLAG)]
    return [
        nsys,
        "profile",
        f"--output={out_dir / REPORT_STEM}",
        "--force-overwrite=true",
        f"--trace={TRACE}",
        *child,
    ]
