"""What importing TensorRT-LLM does to a process's environment, and what that does to its children.

tensorrt_llm/_common.py _init() calls MpiComm.local_init() on import (NVIDIA/TensorRT-LLM@0fccc5b97dd7b23c438e740b3bf4dcde607266c4),
which initialises MPI. Open MPI 4.x, started without mpirun, is a singleton: fork_hnp() in
orte/mca/ess/singleton/ess_singleton_module.c (open-mpi/ompi@011403c04a7368f7266e6b6da27e41f28b49f502)
starts an orted, splits the PMIx URI it reports into four "KEY=VALUE" strings and putenv()s each
(rte_finalize unsets them by name: PMIX_NAMESPACE, PMIX_RANK, PMIX_SERVER_URI, PMIX_SECURITY_MODE).
putenv() changes the C library's environ, which a child started with env=None inherits, and not
Python's os.environ, read once at startup. A child MPI process that inherits them fails in
orte_init: "getting local rank failed --> Returned value No permission (-17)" (mpi4py/mpi4py#705,
open-mpi/ompi#12027).
"""

from __future__ import annotations

import ctypes
import os
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PMIX_VARIABLES = ("PMIX_NAMESPACE", "PMIX_RANK", "PMIX_SERVER_URI", "PMIX_SECURITY_MODE")


@contextmanager
def singleton_mpi_parent() -> Iterator[None]:
    """This process as Open MPI leaves it after `import tensorrt_llm`: the PMIx variables putenv()'d."""
    libc = ctypes.CDLL(None)
    values = {
        "PMIX_NAMESPACE": "2912747521",
        "PMIX_RANK": "0",
        "PMIX_SERVER_URI": "pmix-server.4242;tcp4://127.0.0.1:45031",
        "PMIX_SECURITY_MODE": "native",
    }
    # putenv keeps the very buffer it is given: these must live until unsetenv.
    buffers = [ctypes.create_string_buffer(f"{k}={v}".encode()) for k, v in values.items()]
    for buffer in buffers:
        assert libc.putenv(buffer) == 0
    try:
        assert not set(PMIX_VARIABLES) & set(os.environ)  # Python's copy does not see them
        yield
    finally:
        for name in PMIX_VARIABLES:
            libc.unsetenv(name.encode())
        del buffers


def inherits_mpi_job(env: dict[str, str] | None) -> bool:
    """Whether a child started with `env` (None: the C library's environ, as subprocess does) would
    see the PMIx variables of the parent's singleton job, and so fail in orte_init."""
    if env is not None:
        return "PMIX_SERVER_URI" in env
    getenv = ctypes.CDLL(None).getenv
    getenv.restype = ctypes.c_char_p
    return getenv(b"PMIX_SERVER_URI") is not None


def write_mpi_child_packages(root: Path) -> Path:
    """Stand-ins for tensorrt_llm and tensorrt, as a child Python imports them: tensorrt_llm's import
    initialises MPI and, like Open MPI's orte_init, aborts the process when it finds the PMIx
    variables of a job it does not belong to. Returns the folder to put on PYTHONPATH."""
    (root / "tensorrt_llm").mkdir(parents=True)
    (root / "tensorrt_llm" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import os, sys
            if "PMIX_SERVER_URI" in os.environ:
                sys.stderr.write(
                    "It looks like orte_init failed for some reason; your parallel process is\\n"
                    "likely to abort.\\n  getting local rank failed\\n"
                    "  --> Returned value No permission (-17) instead of ORTE_SUCCESS\\n"
                )
                os._exit(1)
            __version__ = "1.2.1"
            """
        )
    )
    (root / "tensorrt.py").write_text('__version__ = "10.14.1.48"\n')
    return root
