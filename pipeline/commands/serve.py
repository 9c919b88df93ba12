"""`trtllm-pipeline serve`: keep a server running on the current published version of a variant.

Where the backend's repositories are served by the tritonserver bundled with this install, it runs
here, on a view of the version (the Python backend writes `__pycache__` into what it serves), until
a signal stops it; otherwise the backend's command (the container's `docker run`) is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from pipeline.backends import backend_of
from pipeline.backends.base import PlannedCommand
from pipeline.commands.checks import check_filters, check_work_dir
from pipeline.core.errors import InputError
from pipeline.core.reporter import Reporter
from pipeline.facts.config import PipelineConfig
from pipeline.facts.container import DEFAULT_PORTS, ServePorts
from pipeline.serving.server import TritonInstall, TritonServer, require_free
from pipeline.serving.smoke import published_repository, require_intact, serving_view


@dataclass(frozen=True)
class ServeResult:
    """What `serve` returns when it does not run the server itself: the command that does."""

    command: PlannedCommand


def chosen_variant(
    config: PipelineConfig, precisions: frozenset[str], profiles: frozenset[str]
) -> tuple[str, str]:
    """The one variant the filters select; with none given, the config's first (one server, one variant)."""
    selected = [
        (precision.value, profile.name)
        for precision in config.quantization.precisions
        for profile in config.profiles
        if (not precisions or precision.value in precisions) and (not profiles or profile.name in profiles)
    ]
    if len(selected) > 1 and (precisions or profiles):
        names = ", ".join(f"{p}/{q}" for p, q in selected)
        raise InputError(
            f"--precision/--profile select {len(selected)} variants ({names}); serve runs one",
            hint="name one precision and one profile",
        )
    return selected[0]


def serve(
    config: PipelineConfig,
    work_dir: Path,
    *,
    reporter: Reporter,
    precisions: frozenset[str] = frozenset(),
    profiles: frozenset[str] = frozenset(),
    ports: ServePorts = DEFAULT_PORTS,
    install: TritonInstall | None = None,
) -> ServeResult:
    """Serve the variant until interrupted (the bundled server), or return the command that serves it."""
    check_filters(config, precisions, profiles)
    check_work_dir(work_dir)
    precision, profile = chosen_variant(config, precisions, profiles)
    repository = published_repository(config, precision, profile)
    require_intact(repository, "refusing to serve it")
    backend = backend_of(config)
    if not backend.serving(config).served_here:
        return ServeResult(backend.serve_command(config, precision, profile, repository.absolute(), ports))
    run_here(repository, work_dir / "serve" / precision / profile, ports, reporter=reporter, install=install)


def run_here(
    repository: Path, folder: Path, ports: ServePorts, *, reporter: Reporter, install: TritonInstall | None
) -> NoReturn:
    """The bundled tritonserver on a view of `repository` in `folder`, until a signal (Interrupted) stops
    it; the server leaving on its own is a StageError. Either way it is stopped by its PID, so it frees
    its shared memory."""
    require_free(ports)
    server = TritonServer(
        serving_view(repository, folder), work_dir=folder, install=install, ports=ports, stage="serve"
    )
    # The log's first line is the command, runnable as is when pasted (its environment included).
    reporter.info(f"serving {repository.resolve()} (command and log: {server.log_path})")
    with server:
        reporter.info(
            f"ready: {server.url} (gRPC {ports.host}:{ports.grpc}, metrics "
            f"http://{ports.host}:{ports.metrics}/metrics); Ctrl-C stops it"
        )
        server.wait_exit()
