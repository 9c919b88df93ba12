"""The one way the pipeline runs external tools: argv lists, logged, checked.

The runner is injectable so tests can replace the external process (and only
that) without patching modules.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pipeline.core.errors import ToolFailedError

ToolRunner = Callable[..., subprocess.CompletedProcess]


def child_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a child process starts with: Python's own copy of this process's, plus `extra`.

    Never the C library's live environ (what env=None hands down): importing TensorRT-LLM initialises
    MPI (MpiComm.local_init in tensorrt_llm/_common.py), and Open MPI 4.x as a singleton putenv()s
    PMIX_NAMESPACE, PMIX_RANK, PMIX_SERVER_URI and PMIX_SECURITY_MODE there (ompi
    orte/mca/ess/singleton/ess_singleton_module.c, fork_hnp). A child that inherits them takes them
    for an MPI job it belongs to and fails in orte_init (ompi#12027, mpi4py#705). os.environ is read
    once at startup, so it holds what Python set and none of what a library putenv()s later.
    """
    return {**os.environ, **(extra or {})}


def run_tool(
    argv: Sequence[str],
    *,
    stage: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    runner: ToolRunner = subprocess.run,
) -> None:
    """Run argv (never through a shell), append its command line and output to log_path, raise on failure.

    The child's environment is child_environ(env): this process's, with `env` added.
    """
    argv = [str(a) for a in argv]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        result = runner(
            argv, stdout=log, stderr=subprocess.STDOUT, env=child_environ(env), cwd=cwd, check=False
        )
    if result.returncode != 0:
        raise ToolFailedError(stage, argv, result.returncode, log_path)
