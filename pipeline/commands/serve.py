"""`trtllm-pipeline serve`: keep a server running on the current published version of a variant, or of
several variants at once (pipeline.serving.combined names each one's models).

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
from pipeline.core.reporter import Reporter
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig
from pipeline.facts.container import DEFAULT_PORTS, VARIANTS_MOUNT, ServePorts, combined_serve_argv
from pipeline.serving.combined import SEPARATOR, Member, write_combined
from pipeline.serving.server import TritonInstall, TritonServer, require_free
from pipeline.serving.smoke import is_pytorch_release, published_repository, require_intact, serving_view

COMBINED = "combined"  # work/serve/combined/: the repository of several variants, and its server's log


@dataclass(frozen=True)
class ServeResult:
    """What `serve` returns when it does not run the server itself: the commands that do, and why there
    are several where there are (None: one)."""

    commands: list[PlannedCommand]
    why_several: str | None = None


def chosen_variants(
    config: PipelineConfig,
    precisions: frozenset[str],
    profiles: frozenset[str],
    backends: frozenset[str],
    *,
    every: bool = False,
) -> list[tuple[str, str, str]]:
    """The variants the filters select (with `every`, or any filter given); with neither, the config's
    first alone."""
    selected = selected_variants(config, precisions, profiles, backends)
    return selected if every or precisions or profiles or backends else selected[:1]


def serve(
    config: PipelineConfig,
    work_dir: Path,
    *,
    reporter: Reporter,
    precisions: frozenset[str] = frozenset(),
    profiles: frozenset[str] = frozenset(),
    backends: frozenset[str] = frozenset(),
    every: bool = False,
    ports: ServePorts = DEFAULT_PORTS,
    install: TritonInstall | None = None,
) -> ServeResult:
    """Serve the selected variants until interrupted (the bundled server), or return the command that
    serves them: one variant as its version is, several together under names of their own."""
    check_work_dir(work_dir)
    variants = chosen_variants(config, precisions, profiles, backends, every=every)
    if len(variants) > 1:
        return serve_together(config, variants, work_dir, reporter=reporter, ports=ports, install=install)
    name, precision, profile = variants[0]
    repository = published_repository(config, name, precision, profile)
    require_intact(repository, "refusing to serve it")
    backend = backend_of(config, name)
    if not backend.serving(config).served_here:
        return ServeResult([backend.serve_command(config, precision, profile, repository.absolute(), ports)])
    folder = work_dir / "serve" / name / precision / profile
    require_free(ports)
    view = serving_view(repository, folder)
    # A PyTorch-backend release holds Triton's llmapi repository in a folder of its own.
    models = view / layout.LLMAPI_REPOSITORY if is_pytorch_release(repository) else view
    run_here(models, folder, ports, serving=str(repository.resolve()), reporter=reporter, install=install)


def serve_together(
    config: PipelineConfig,
    variants: list[tuple[str, str, str]],
    work_dir: Path,
    *,
    reporter: Reporter,
    ports: ServePorts,
    install: TritonInstall | None,
) -> ServeResult:
    """Several variants on one server, each model named `<backend>.<precision>.<profile>.<model>`
    (pipeline.serving.combined), from a combined repository in work/serve/combined/."""
    versions = {}
    for variant in variants:
        repository = published_repository(config, *variant)
        require_intact(repository, "refusing to serve it")
        versions[variant] = repository.resolve()
    folder = work_dir / "serve" / COMBINED
    if all(backend_of(config, backend).serving(config).served_here for backend, _, _ in variants):
        require_free(ports)
        members = [Member(variant, version, str(version)) for variant, version in versions.items()]
        served = write_combined(members, folder / layout.REPOSITORY)
        run_here(
            folder / layout.REPOSITORY,
            folder,
            ports,
            serving=f"{len(variants)} variants together",
            reporter=reporter,
            install=install,
            served=served,
        )
    return _container_commands(config, versions, folder, ports)


def _container_commands(
    config: PipelineConfig, versions: dict[tuple[str, str, str], Path], folder: Path, ports: ServePorts
) -> ServeResult:
    """On a GPU host: one `docker run` of the combined repository, each version mounted read-only; where
    a variant cannot join one (a PyTorch-backend release: its llmapi model's code comes from a
    TensorRT-LLM checkout, copied in when the container starts), one command per variant."""
    pytorch = [v for v, version in versions.items() if is_pytorch_release(version)]
    if pytorch:
        commands = [
            backend_of(config, backend).serve_command(
                config, precision, profile, version, _shifted(ports, 10 * index)
            )
            for index, ((backend, precision, profile), version) in enumerate(versions.items())
        ]
        why = (
            f"{'/'.join(pytorch[0])} is a PyTorch-backend release, whose llmapi model runs upstream's model.py "
            "copied in when its container starts, so it cannot join one repository; one server per variant, "
            "each on ports 10 above the one before"
        )
        return ServeResult(commands, why_several=why)
    members = [Member(v, version, f"{VARIANTS_MOUNT}/{SEPARATOR.join(v)}") for v, version in versions.items()]
    served = write_combined(members, folder / layout.REPOSITORY)
    mounts = {SEPARATOR.join(v): version for v, version in versions.items()}
    names = "; ".join(f"{'/'.join(v)}: {', '.join(models)}" for v, models in served.items())
    command = PlannedCommand(
        purpose=f"serve {len(versions)} variants together ({names})",
        argv=combined_serve_argv(folder.absolute() / layout.REPOSITORY, mounts, ports),
    )
    return ServeResult([command])


def _shifted(ports: ServePorts, by: int) -> ServePorts:
    return ServePorts(host=ports.host, http=ports.http + by, grpc=ports.grpc + by, metrics=ports.metrics + by)


def run_here(
    models: Path,
    folder: Path,
    ports: ServePorts,
    *,
    serving: str,
    reporter: Reporter,
    install: TritonInstall | None,
    served: dict[tuple[str, str, str], list[str]] | None = None,
) -> NoReturn:
    """The bundled tritonserver on the repository `models` (a view: the server may write into it), its
    log in `folder`, until a signal (Interrupted) stops it; the server leaving on its own is a
    StageError. Either way it is stopped by its PID, so it frees its shared memory. `served`: each
    variant's model names, reported with their URLs once ready."""
    server = TritonServer(models, work_dir=folder, install=install, ports=ports, stage="serve")
    # The log's first line is the command, runnable as is when pasted (its environment included).
    reporter.info(f"serving {serving} (command and log: {server.log_path})")
    with server:
        reporter.info(
            f"ready: {server.url} (gRPC {ports.host}:{ports.grpc}, metrics "
            f"http://{ports.host}:{ports.metrics}/metrics); Ctrl-C stops it"
        )
        for variant, names in (served or {}).items():
            urls = ", ".join(f"{server.url}/v2/models/{name}" for name in names)
            reporter.info(f"{'/'.join(variant)}: {urls}")
        server.wait_exit()
