"""The options several commands share, with their help text (one spelling per option)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Pipeline TOML. Default: the embedded tiny CPU config.", show_default=False
    ),
]
WorkDirOpt = Annotated[Path, typer.Option("--work-dir", help="Artifact store, logs and reports.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun the named stage(s) even when up to date.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once if another run holds the work dir.")]
PrecisionOpt = Annotated[
    list[str] | None, typer.Option("--precision", help="Only this precision (repeatable).")
]
ProfileOpt = Annotated[list[str] | None, typer.Option("--profile", help="Only this profile (repeatable).")]
BackendOpt = Annotated[
    list[str] | None,
    typer.Option("--backend", help="Only this backend, by its name in the config's backends (repeatable)."),
]
ArchOpt = Annotated[
    bool, typer.Option("--allow-arch-mismatch", help="Build even if the visible GPU is not the target's SM.")
]
VisualizeOpt = Annotated[
    bool, typer.Option("--visualize", help="Also export each engine's network as ONNX (build.visualize).")
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Print each task that would run and each external command's argv; run nothing."
    ),
]
MountPathOpt = Annotated[
    str | None,
    typer.Option(
        "--mount-path",
        help="Where the serving container mounts a published version, or its absolute path on the host "
        "(publish.mount_path): the engine's gpt_model_path is written under it.",
        show_default=False,
    ),
]

ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="local: one task at a time here; ray: every ready task at once on a Ray cluster "
        "(execution.executor).",
        show_default=False,
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="The Ray cluster to run on: auto, <head>:6379 or ray://<head>:10001 (execution.ray_address; "
        "default auto).",
        show_default=False,
    ),
]

DEFAULT_WORK_DIR = Path("work")
CalibDirOpt = Annotated[Path, typer.Option("--out", help="Folder the data sets are written to.")]

# Where `serve` listens: tritonserver's own defaults (pipeline.facts.container.DEFAULT_PORTS).
HostOpt = Annotated[str, typer.Option("--host", help="The address every endpoint listens on.")]
HttpPortOpt = Annotated[
    int, typer.Option("--http-port", min=1, max=65535, help="HTTP (KServe v2, /generate).")
]
GrpcPortOpt = Annotated[int, typer.Option("--grpc-port", min=1, max=65535, help="gRPC (streaming).")]
MetricsPortOpt = Annotated[int, typer.Option("--metrics-port", min=1, max=65535, help="Prometheus metrics.")]
