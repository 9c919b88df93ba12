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
from pipeline.commands.checks import check_work_dir, selected_variants
from pipeline.core.errors import InputError
from pipeline.core.reporter import Reporter
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig
from pipeline.facts.container import DEFAULT_PORTS, ServePorts
from pipeline.serving.server import TritonInstall, TritonServer, require_free
from pipeline.serving.smoke import is_pytorch_release, published_repository, require_intact, serving_view


@dataclass(frozen=True)
class ServeResult:
    """What `serve` returns when it does not run the server itself: the command that does."""

    command: PlannedCommand


def chosen_variant(
    config: PipelineConfig, precisions: frozenset[str], profiles: frozenset[str], backends: frozenset[str]
) -> tuple[str, str, str]:
    """The one variant the filters select; with none given, the config's first (one server, one variant)."""
    selected = selected_variants(config, precisions, profiles, backends)
    if len(selected) > 1 and (precisions or profiles or backends):
        names = ", ".join("/".join(v) for v in selected)
        raise InputError(
            f"--backend/--precision/--profile select {len(selected)} variants ({names}); serve runs one",
            hint="name one backend, one precision and one profile",
        )
    return selected[0]


def serve(
    config: PipelineConfig,
    work_dir: Path,
    *,
    reporter: Reporter,
    precisions: frozenset[str] = frozenset(),
    profiles: frozenset[str] = frozenset(),
    backends: frozenset[str] = frozenset(),
    ports: ServePorts = DEFAULT_PORTS,
    install: TritonInstall | None = None,
) -> ServeResult:
    """Serve the variant until interrupted (the bundled server), or return the command that serves it."""
    check_work_dir(work_dir)
    name, precision, profile = chosen_variant(config, precisions, profiles, backends)
    repository = published_repository(config, name, precision, profile)
    require_intact(repository, "refusing to serve it")
    backend = backend_of(config, name)
    if not backend.serving(config).served_here:
        return ServeResult(backend.serve_command(config, precision, profile, repository.absolute(), ports))
    folder = work_dir / "serve" / name / precision / profile
    run_here(repository, folder, ports, reporter=reporter, install=install)


def run_here(
    repository: Path, folder: Path, ports: ServePorts, *, reporter: Reporter, install: TritonInstall | None
) -> NoReturn:
    """The bundled tritonserver on a view of `repository` in `folder`, until a signal (Interrupted) stops
    it; the server leaving on its own is a StageError. Either way it is stopped by its PID, so it frees
    its shared memory."""
    require_free(ports)
    view = serving_view(repository, folder)
    # A PyTorch-backend release holds Triton's llmapi repository in a folder of its own.
    models = view / layout.LLMAPI_REPOSITORY if is_pytorch_release(repository) else view
    server = TritonServer(models, work_dir=folder, install=install, ports=ports, stage="serve")
    # The log's first line is the command, runnable as is when pasted (its environment included).
    reporter.info(f"serving {repository.resolve()} (command and log: {server.log_path})")
    with server:
        reporter.info(
            f"ready: {server.url} (gRPC {ports.host}:{ports.grpc}, metrics "
            f"http://{ports.host}:{ports.metrics}/metrics); Ctrl-C stops it"
        )
        server.wait_exit()
