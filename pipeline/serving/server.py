"""A real tritonserver on this machine: the one bundled in the nvidia-pytriton wheel.

nvidia-pytriton 0.7.0 ships tritonserver 2.51.0, the Python backend and a
backend stub per Python version. Traps this module exists to avoid: the stub
copied out of the wheel loses its RPATH, so LD_LIBRARY_PATH must include
nvidia_pytriton.libs (without it the server hangs, silently, leaving /dev/shm
regions behind); the stub finds its packages through `python` on PATH, so this
interpreter's bin comes first; and the server is stopped by its PID with
SIGTERM, so it cleans its shared memory up.

A long-running process, so it is started with Popen rather than proc.run_tool;
its argv is logged and its output kept in a log file all the same.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import MissingDependencyError, StageError

STAGE = "smoke"
# Errors every start logs on a machine without a GPU; never the reason it failed.
LOG_NOISE = ("CudaDriverHelper has not been initialized",)


@dataclass(frozen=True)
class TritonInstall:
    """Where the server binary, the Python backend, its stub and their libraries are."""

    tritonserver: Path
    python_backend: Path  # libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python version
    libs: Path  # the wheel's bundled shared libraries
    python_bin: Path  # the bin folder whose `python` the stub runs models with

    @classmethod
    def bundled(cls) -> TritonInstall:
        """The tritonserver of the installed nvidia-pytriton wheel (the package is located, not imported)."""
        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise MissingDependencyError(
                "nvidia-pytriton is not installed: it brings the tritonserver the smoke test runs",
                hint="make setup (or pip install -c constraints.txt nvidia-pytriton==0.7.0)",
            )
        package = Path(spec.origin).parent
        server = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            tritonserver=server / "bin" / "tritonserver",
            python_backend=server / "backends" / "python",
            stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs=package.parent / "nvidia_pytriton.libs",
            python_bin=Path(sys.executable).parent,
        )
        install.check()
        return install

    def check(self) -> None:
        for path in (self.tritonserver, self.python_backend / "libtriton_python.so", self.stub, self.libs):
            if not path.exists():
                raise MissingDependencyError(
                    f"{path} is missing: the nvidia-pytriton install is incomplete or for another Python",
                    hint="reinstall nvidia-pytriton==0.7.0 into this virtual environment",
                )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """Start, wait for, and stop one tritonserver serving `repository` over HTTP on localhost."""

    def __init__(
        self,
        repository: Path,
        *,
        work_dir: Path,
        install: TritonInstall | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
    ) -> None:
        self.repository = repository
        self.work_dir = work_dir
        self.install = install or TritonInstall.bundled()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port  # None: gRPC off
        self.log_path = work_dir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        assert self.grpc_port is not None, "started without gRPC"
        return f"127.0.0.1:{self.grpc_port}"

    def _backends(self) -> Path:
        """A backend folder holding the Python backend with the stub for this interpreter."""
        backends = self.work_dir / "backends"
        python = backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for src in (*self.install.python_backend.iterdir(), self.install.stub):
            if src.is_file():
                shutil.copy2(src, python / src.name)
        return backends

    def argv(self, backends: Path) -> list[str]:
        return [
            str(self.install.tritonserver),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            # Loopback only; gRPC only when a client streams over it, metrics never (their default
            # address is 0.0.0.0 too). Flags as tritonserver 2.51's --help lists them.
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            *(
                ["--allow-grpc=false"]
                if self.grpc_port is None
                else ["--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}"]
            ),
            "--allow-metrics=false",
            "--exit-on-error=true",
            "--exit-timeout-secs=30",  # unloading Python models takes seconds on a busy CPU
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(self.install.libs)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        env["PATH"] = os.pathsep.join([str(self.install.python_bin), env.get("PATH", "")])
        return env

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        argv = self.argv(self._backends())
        with open(self.log_path, "w") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Return once every model is loaded; raise with the server's last log lines if it exits or stalls."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StageError(
                    STAGE,
                    f"tritonserver exited with code {self.process.returncode} before it was ready: "
                    f"{self.failure_line()}",
                    log=self.log_path,
                )
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise StageError(STAGE, f"tritonserver not ready after {timeout_s:.0f}s", log=self.log_path)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def failure_line(self) -> str:
        """The first error the server logged (a model that did not load is named, with the reason)."""
        lines = self.log_path.read_text(errors="replace").splitlines()[1:]  # [0] is the argv
        errors = [
            line
            for line in lines
            if (line.startswith("E") or line.startswith("error:")) and not any(n in line for n in LOG_NOISE)
        ]
        return (errors or lines[-1:] or ["no output"])[0].strip()[:400]

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM by PID (the server then unloads models and frees /dev/shm); SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
