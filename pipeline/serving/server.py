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
from typing import NoReturn

from pipeline.core.errors import InputError, MissingDependencyError, StageError
from pipeline.core.tools import child_environ
from pipeline.facts.container import ServePorts

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


def require_free(ports: ServePorts) -> None:
    """Each port the server would listen on can be bound on its host: one line naming the option, not
    a server that dies after loading every model."""
    for option, port in ports.named().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As a listening server does: a port left in TIME_WAIT by a stopped server is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ports.host, port))
            except OSError as exc:
                raise InputError(
                    f"{option} {port}: cannot listen on {ports.host}:{port} ({exc.strerror})",
                    hint=f"stop what holds it, or pass another {option}",
                ) from None


class TritonServer:
    """Start, wait for, and stop one tritonserver serving `repository`: HTTP on a free loopback port
    unless `ports` says where (and then gRPC and metrics too)."""

    def __init__(
        self,
        repository: Path,
        *,
        work_dir: Path,
        install: TritonInstall | None = None,
        http_port: int | None = None,
        ports: ServePorts | None = None,
        grpc_port: int | None = None,  # without ports: gRPC on loopback too (off when None)
        stage: str = "smoke",  # the command its errors name
    ) -> None:
        self.repository = repository
        self.stage = stage
        self.work_dir = work_dir
        self.install = install or TritonInstall.bundled()
        self.ports = ports
        self.host = ports.host if ports else "127.0.0.1"
        self.http_port = ports.http if ports else (http_port or free_port())
        self.grpc_port = ports.grpc if ports else grpc_port
        self.log_path = work_dir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        assert self.grpc_port is not None, "started without gRPC"
        return f"{self.host}:{self.grpc_port}"

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
        # Every endpoint on the given host (their default address is 0.0.0.0); smoke speaks HTTP (and gRPC
        # when given a port), so there metrics stay off. Flags as tritonserver 2.51's --help lists them.
        if self.ports is None:
            grpc = [f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}"] if self.grpc_port else []
            endpoints = [*(grpc or ["--allow-grpc=false"]), "--allow-metrics=false"]
        else:
            endpoints = [
                f"--grpc-address={self.host}",
                f"--grpc-port={self.ports.grpc}",
                f"--metrics-address={self.host}",
                f"--metrics-port={self.ports.metrics}",
            ]
        return [
            str(self.install.tritonserver),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            *endpoints,
            "--exit-on-error=true",
            "--exit-timeout-secs=30",  # unloading Python models takes seconds on a busy CPU
        ]

    def env_changes(self) -> dict[str, str]:
        """What the server needs beyond the caller's environment: the wheel's libraries for the stub,
        and this interpreter's bin first on PATH."""
        libs = [str(self.install.libs)] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
        return {
            "LD_LIBRARY_PATH": ":".join(libs),
            "PATH": os.pathsep.join([str(self.install.python_bin), os.environ.get("PATH", "")]),
        }

    def env(self) -> dict[str, str]:
        return {**child_environ(), **self.env_changes()}

    def command_line(self, backends: Path) -> str:
        """The command as a shell runs it when pasted, its environment included."""
        assignments = [f"{key}={value}" for key, value in self.env_changes().items()]
        return shlex.join(["env", *assignments, *self.argv(backends)])

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        backends = self._backends()
        with open(self.log_path, "w") as log:
            log.write(f"$ {self.command_line(backends)}\n")
            log.flush()
            self.process = subprocess.Popen(
                self.argv(backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Return once every model is loaded; raise with the server's last log lines if it exits or stalls."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StageError(
                    self.stage,
                    f"tritonserver exited with code {self.process.returncode} before it was ready: "
                    f"{self.failure_line()}",
                    log=self.log_path,
                )
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise StageError(self.stage, f"tritonserver not ready after {timeout_s:.0f}s", log=self.log_path)

    def wait_exit(self) -> NoReturn:
        """Block while the server runs (a signal interrupts the wait); its exiting on its own is an error."""
        assert self.process is not None, "start() first"
        code = self.process.wait()
        raise StageError(
            self.stage, f"tritonserver exited with code {code}: {self.failure_line()}", log=self.log_path
        )

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
