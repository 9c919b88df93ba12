"""The one way the pipeline runs external tools: argv lists, logged, checked.

The runner is injectable so tests can replace the external process (and only
that) without patching modules.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pipeline.core.errors import ToolFailedError

ToolRunner = Callable[..., subprocess.CompletedProcess]


def run_tool(
    argv: Sequence[str],
    *,
    stage: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    runner: ToolRunner = subprocess.run,
) -> None:
    """Run argv (never through a shell), append its command line and output to log_path, raise on failure."""
    argv = [str(a) for a in argv]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        result = runner(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False)
    if result.returncode != 0:
        raise ToolFailedError(stage, argv, result.returncode, log_path)
