"""The commands: each parses its options, calls its library verb (pipeline.commands) and prints.

Heavy modules (torch, pydantic models, stages) are imported inside commands so `--help` stays
instant. A command that fails raises the verb's typed error; `pipeline.cli.main` turns it into
one line and the exit code.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.options import (
    DEFAULT_WORK_DIR,
    ArchOpt,
    BackendOpt,
    CalibDirOpt,
    ConfigOpt,
    DebugOpt,
    DryRunOpt,
    ExecutorOpt,
    ForceOpt,
    GrpcPortOpt,
    HostOpt,
    HttpPortOpt,
    JsonOpt,
    MetricsPortOpt,
    MountPathOpt,
    NoWaitOpt,
    PrecisionOpt,
    ProfileOpt,
    RayAddressOpt,
    VisualizeOpt,
    WorkDirOpt,
)
from pipeline.facts.container import DEFAULT_PORTS

app = typer.Typer(
    name="trtllm-pipeline",
    help="Hugging Face LLM -> INT8 TensorRT-LLM engines -> accuracy gate -> Triton model repository.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from pipeline import __version__
        from pipeline.facts.container import SERVING_CONTAINER

        print(
            f"trtllm-pipeline {__version__} (TensorRT-LLM {SERVING_CONTAINER.tensorrt_llm}, {SERVING_CONTAINER.tag})"
        )
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_show_version, help="Print the version and exit."),
    ] = False,
) -> None:
    pass


class Invocation:
    """What `main` needs to know about the command being run."""

    debug = False
    argv: list[str] = []  # this invocation's arguments (bench --nsys runs them again under nsys)
    work_dir: Path | None = None  # where a failed write that names no file was writing


def _console(stderr: bool = False):
    from pipeline.output.console import make_console

    return make_console(stderr)


def _reporter(as_json: bool):
    """Progress and messages; with --json they go to stderr, so stdout carries only the report."""
    from pipeline.output.console import RichReporter

    return RichReporter(_console(stderr=as_json))


def _load(config_path: Path | None, debug: bool):
    from pipeline.facts.config import load_config

    Invocation.debug = debug
    return load_config(config_path)


def _stage_command(
    stages: frozenset[str], name: str, help_text: str, *, unused: frozenset[str] = frozenset()
) -> None:
    """A command that runs `stages` (and what they need); `unused`: options it does not list,
    because nothing it runs reads them."""

    def command(
        config: ConfigOpt = None,
        work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
        force: ForceOpt = False,
        debug: DebugOpt = False,
        as_json: JsonOpt = False,
        no_wait: NoWaitOpt = False,
        precision: PrecisionOpt = None,
        profile: ProfileOpt = None,
        backend: BackendOpt = None,
        allow_arch_mismatch: ArchOpt = False,
        visualize: VisualizeOpt = False,
        dry_run: DryRunOpt = False,
        mount_path: MountPathOpt = None,
        executor: ExecutorOpt = None,
        ray_address: RayAddressOpt = None,
    ) -> None:
        from pipeline.commands.run import RunRequest

        Invocation.work_dir = work_dir
        cfg = _load(config, debug)
        request = RunRequest(
            stages=stages,
            force=stages if force else frozenset(),
            precisions=frozenset(precision or ()),
            profiles=frozenset(profile or ()),
            backends=frozenset(backend or ()),
            no_wait=no_wait,
            allow_arch_mismatch=allow_arch_mismatch,
            debug=debug,
            visualize=visualize,
            mount_path=mount_path,
            executor=executor,
            ray_address=ray_address,
        )
        if dry_run:
            _print_dry_run(cfg, work_dir, request, as_json)
        else:
            _run(cfg, work_dir, request, as_json)

    command.__doc__ = help_text
    signature = inspect.signature(command, eval_str=True)
    listed = [p for p in signature.parameters.values() if p.name not in unused]
    command.__signature__ = signature.replace(parameters=listed)  # what typer reads for the options
    app.command(name)(command)


# fetch reads no precision or profile; calibrate no profile; only publish writes under a mount path.
_ENGINE_OPTIONS = frozenset({"allow_arch_mismatch", "visualize"})


def _run(config, work_dir: Path, request, as_json: bool) -> None:
    from pipeline.commands.run import run_pipeline
    from pipeline.output.console import results_table

    result = run_pipeline(config, work_dir, request, reporter=_reporter(as_json))
    if as_json:
        print(result.report_path.read_text())
    else:
        console = _console()
        backends = ", ".join(b.name for b in config.backends)
        title = f"trtllm-pipeline ({config.model.name} on {config.target.gpu}, {backends})"
        console.print(results_table(title, result.report.results))
        console.print(f"report: {result.report_path}")
    if result.error is not None:
        raise result.error


def _print_dry_run(config, work_dir: Path, request, as_json: bool) -> None:
    from pipeline.commands.dryrun import dry_run
    from pipeline.output.views import print_dry_run

    dry = dry_run(config, work_dir, request)
    if as_json:
        print(dry.model_dump_json(indent=2))
    else:
        print_dry_run(_console(), dry)


_stage_command(
    frozenset({"fetch"}),
    "fetch",
    "Download the pinned model revision (safetensors only, verified).",
    unused=_ENGINE_OPTIONS | {"precision", "profile", "mount_path"},
)
_stage_command(
    frozenset({"calibrate"}),
    "calibrate",
    "Calibrate INT8 with ModelOpt and export TensorRT-LLM checkpoints.",
    unused=_ENGINE_OPTIONS | {"profile", "mount_path"},
)
_stage_command(
    frozenset({"build"}),
    "build",
    "Build one engine per precision x profile (after the memory plan).",
    unused=frozenset({"mount_path"}),
)
_stage_command(
    frozenset({"gate"}),
    "gate",
    "Measure accuracy against the unquantized model; exit 1 below thresholds.",
    unused=frozenset({"mount_path"}),
)
_stage_command(
    frozenset({"publish"}), "publish", "Write the Triton model repository (requires a passing gate)."
)
_stage_command(
    frozenset({"fetch", "calibrate", "build", "gate_engine", "gate", "publish"}),
    "run",
    "Run every stage that is not up to date.",
)


@app.command("status")
def status_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    profile: ProfileOpt = None,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show each stage as up to date, modified (which file), stale (and why) or missing."""
    from pipeline.commands.status import status_of
    from pipeline.output.console import results_table
    from pipeline.output.run_report import task_row

    results = status_of(
        _load(config, debug),
        work_dir,
        precisions=frozenset(precision or ()),
        profiles=frozenset(profile or ()),
        backends=frozenset(backend or ()),
    )
    if as_json:
        print(json.dumps([task_row(r) for r in results], indent=2))
    else:
        _console().print(results_table(f"status of {work_dir}", results))


@app.command("verify")
def verify_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    all_versions: Annotated[
        bool, typer.Option("--all", help="Every published version, not only the one `current` points to.")
    ] = False,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check every artifact and each current published version against its manifest; exit 2 if any differs."""
    from pipeline.commands.verify import verify
    from pipeline.output.views import print_audit

    cfg = _load(config, debug)
    report = verify(cfg, work_dir, all_versions=all_versions)
    if as_json:
        print(json.dumps({"ok": report.ok, **report.model_dump(mode="json")}, indent=2))
    else:
        print_audit(_console(), report, work_dir, cfg.publish.destination)
    if report.error is not None:
        raise report.error


@app.command("plan")
def plan_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    target: Annotated[
        list[str] | None, typer.Option("--target", help="Plan for this target too (repeatable).")
    ] = None,
    summary: Annotated[
        bool, typer.Option("--summary", help="One row per target and profile, without the derivations.")
    ] = False,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Memory and speed plan per target and profile (pure arithmetic, no GPU needed)."""
    from pipeline.commands.plan import plan

    report = plan(_load(config, debug), work_dir, target or ())
    if as_json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        from pipeline.output.plan_table import plan_view, summary_table

        title = f"plan: {report.model} ({report.architecture})"
        _console().print(summary_table(title, report.plans) if summary else plan_view(title, report.plans))
    if report.error is not None:
        raise report.error


@app.command("bench")
def bench_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder. Default: WORK_DIR/reports/bench.")
    ] = None,
    precision: PrecisionOpt = None,
    profile: ProfileOpt = None,
    backend: BackendOpt = None,
    input_len: Annotated[
        int, typer.Option("--input-len", min=1, help="Prompt tokens (clamped to each profile).")
    ] = 128,
    output_len: Annotated[
        int, typer.Option("--output-len", min=2, help="Output tokens per request (clamped to each profile).")
    ] = 128,
    latency_runs: Annotated[int, typer.Option("--latency-runs", min=1, help="Batch-1 runs per engine.")] = 5,
    throughput_runs: Annotated[
        int, typer.Option("--throughput-runs", min=1, help="Runs per batch size (median, min-max).")
    ] = 3,
    batch_size: Annotated[
        list[int] | None,
        typer.Option(
            "--batch-size", min=1, help="Throughput batch size (repeatable). Default: 1, 2, 4... max."
        ),
    ] = None,
    itl_budget_ms: Annotated[
        float,
        typer.Option(
            "--itl-budget-ms", min=0.001, help="Latency budget for the recommendation: inter-token ms."
        ),
    ] = 50.0,
    ttft_budget_ms: Annotated[
        float,
        typer.Option(
            "--ttft-budget-ms",
            min=0.001,
            help="Latency budget for the recommendation: time to first token ms.",
        ),
    ] = 500.0,
    server_url: Annotated[
        str | None,
        typer.Option(
            "--server-url",
            help="Measure the Triton server serving the selected engine (e.g. http://localhost:8000) "
            "with aiperf, instead of loading the engine here.",
        ),
    ] = None,
    served: Annotated[
        bool,
        typer.Option(
            "--served",
            help="Also serve each published variant as its users do (an engine repository on the bundled "
            "tritonserver, a trtllm-pytorch release through its trtllm-serve) and measure it with aiperf "
            "(CPU target; on a GPU: --server-url with the serving container).",
        ),
    ] = False,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            help="An OpenAI-compatible server (base URL, e.g. vllm serve's) to run the same aiperf workload "
            "against, named in the same tables and plots (repeatable).",
        ),
    ] = None,
    concurrency: Annotated[
        list[int] | None,
        typer.Option(
            "--concurrency", min=1, help="Served: concurrent clients (repeatable). Default: 1, 2, 4... max."
        ),
    ] = None,
    served_runs: Annotated[
        int,
        typer.Option(
            "--served-runs",
            min=1,
            max=10,
            help="Served: aiperf profile runs per client count (median, min-max; aiperf allows 1-10).",
        ),
    ] = 3,
    nsys: Annotated[
        bool,
        typer.Option(
            "--nsys",
            help="Record the run with Nsight Systems (`nsys profile`, on PATH) into OUT/bench.nsys-rep.",
        ),
    ] = False,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
    no_wait: NoWaitOpt = False,
) -> None:
    """Measure latency, throughput and peak memory of every built engine (not cached: a measurement)."""
    from pipeline.bench.report import previous_text
    from pipeline.bench.summary import summary_table
    from pipeline.bench.workload import BenchSettings
    from pipeline.commands.bench import bench, default_out_dir, profile_bench
    from pipeline.commands.checks import check_filters

    cfg = _load(config, debug)
    precisions, profiles = frozenset(precision or ()), frozenset(profile or ())
    backends = frozenset(backend or ())
    if nsys:
        check_filters(cfg, precisions, profiles, backends)
        err = _console(stderr=True)
        say = lambda line: err.print(line, soft_wrap=True)  # noqa: E731
        raise typer.Exit(profile_bench(out or default_out_dir(work_dir), Invocation.argv, say=say))
    settings = BenchSettings(
        input_len=input_len,
        output_len=output_len,
        latency_runs=latency_runs,
        throughput_runs=throughput_runs,
        itl_budget_ms=itl_budget_ms,
        ttft_budget_ms=ttft_budget_ms,
        batch_sizes=tuple(batch_size) if batch_size else None,
        server_url=server_url,
        served=served,
        compare=tuple(compare or ()),
        concurrency=tuple(concurrency) if concurrency else None,
        served_runs=served_runs,
    )
    report, paths = bench(
        cfg,
        work_dir,
        settings,
        reporter=_reporter(as_json),
        out_dir=out,
        precisions=precisions,
        profiles=profiles,
        backends=backends,
        no_wait=no_wait,
    )
    if as_json:
        print(paths["json"].read_text())
    else:
        console = _console()
        console.print(summary_table(report))
        console.print(previous_text(report), highlight=False)
        console.print(f"report: {paths['markdown']} (bench.json, plots beside it)")


@app.command("prune")
def prune_command(
    config: ConfigOpt = None,
    keep: Annotated[
        int,
        typer.Option(
            "--keep", min=1, help="Versions to keep per variant, newest first (current always stays)."
        ),
    ] = 2,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    profile: ProfileOpt = None,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove older published versions of each variant (never the one `current` points to)."""
    from pipeline.commands.prune import prune
    from pipeline.output.views import print_prune

    results = prune(
        _load(config, debug),
        keep=keep,
        dry_run=dry_run,
        reporter=_reporter(as_json),
        precisions=frozenset(precision or ()),
        profiles=frozenset(profile or ()),
        backends=frozenset(backend or ()),
    )
    if as_json:
        print(json.dumps({"dry_run": dry_run, "slots": [r.to_json() for r in results]}, indent=2))
    else:
        print_prune(_console(), results, dry_run)


calib_data_app = typer.Typer(
    help="Calibration and evaluation data sets (JSONL + manifest) in calib_data/.", no_args_is_help=True
)
app.add_typer(calib_data_app, name="calib-data")


@calib_data_app.command("fetch")
def calib_data_fetch_command(
    repo: Annotated[str | None, typer.Option("--repo", help="Hub data set [abisee/cnn_dailymail].")] = None,
    config_name: Annotated[str | None, typer.Option("--config-name", help="Data set config [3.0.0].")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split [train].")] = None,
    field: Annotated[str | None, typer.Option("--field", help="Text column [article].")] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="Rows to freeze [512].")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed [1234].")] = None,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit [main].")] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="Hub URL [HF_ENDPOINT].")] = None,
    out: CalibDirOpt = Path("calib_data"),
    debug: DebugOpt = False,
) -> None:
    """Freeze rows of a hub data set into OUT/<name>.jsonl with a manifest (commit, rows, sha256)."""
    from pipeline.datasets.hub import HubDatasetSpec, fetch_hub_dataset
    from pipeline.datasets.jsonl import read_manifest
    from pipeline.output.console import RichReporter

    Invocation.debug = debug
    given = {"repo_id": repo, "config_name": config_name, "split": split, "text_field": field}
    given |= {"samples": samples, "seed": seed, "revision": revision}
    spec = HubDatasetSpec(**{k: v for k, v in given.items() if v is not None})
    console = _console()
    path = fetch_hub_dataset(spec, out, reporter=RichReporter(console), endpoint=endpoint)
    manifest = read_manifest(path)
    console.print(f"{path}: {manifest.count} records, sha256 {manifest.sha256}" if manifest else str(path))


@calib_data_app.command("write-offline")
def calib_data_write_offline_command(out: CalibDirOpt = Path("calib_data")) -> None:
    """(Re)write the offline sets this project generates itself (deterministic)."""
    from pipeline.datasets.offline import write_offline_sets

    for path in write_offline_sets(out):
        _console().print(str(path))


@app.command("smoke")
def smoke_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    precision: PrecisionOpt = None,
    profile: ProfileOpt = None,
    backend: BackendOpt = None,
    prompts: Annotated[int, typer.Option("--prompts", min=1, help="How many of gate.prompts to send.")] = 2,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", min=1, help="Tokens per answer. Default: gate.max_new_tokens."),
    ] = None,
    tasks: Annotated[
        bool,
        typer.Option(
            "--tasks", help="Also score gate.tasks against the server; each must match its gated score."
        ),
    ] = False,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Serve each published repository on a real tritonserver; its answers must equal the reference runtime's."""
    from pipeline.commands.smoke import smoke
    from pipeline.output.views import print_smoke

    result = smoke(
        _load(config, debug),
        work_dir,
        reporter=_reporter(as_json),
        precisions=frozenset(precision or ()),
        profiles=frozenset(profile or ()),
        backends=frozenset(backend or ()),
        prompts=prompts,
        max_tokens=max_tokens,
        tasks=tasks,
    )
    if as_json:
        print(json.dumps([r.to_json() for r in result.reports], indent=2))
    else:
        print_smoke(_console(), result.reports)
    if result.error is not None:
        raise result.error


@app.command("serve")
def serve_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    profile: ProfileOpt = None,
    host: HostOpt = DEFAULT_PORTS.host,
    http_port: HttpPortOpt = DEFAULT_PORTS.http,
    grpc_port: GrpcPortOpt = DEFAULT_PORTS.grpc,
    metrics_port: MetricsPortOpt = DEFAULT_PORTS.metrics,
    every: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every variant the filters select, on one server (filters that select several do too); "
            "each model is named <backend>.<precision>.<profile>.<model>.",
        ),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Serve the current published version of a variant (or several at once) until Ctrl-C, or print the
    container's command."""
    import shlex

    from pipeline.commands.serve import serve
    from pipeline.core.errors import Interrupted
    from pipeline.facts.container import ServePorts
    from pipeline.output.console import RichReporter

    console = _console()
    try:
        result = serve(
            _load(config, debug),
            work_dir,
            reporter=RichReporter(console),
            precisions=frozenset(precision or ()),
            profiles=frozenset(profile or ()),
            backends=frozenset(backend or ()),
            every=every,
            ports=ServePorts(host=host, http=http_port, grpc=grpc_port, metrics=metrics_port),
        )
    except Interrupted as stop:  # the way a server ends: not an error, but the signal's exit code
        console.print(
            f"stopped by {stop.message.removeprefix('interrupted by ')}; the versions are untouched"
        )
        raise typer.Exit(int(stop.exit_code)) from None
    if result.why_several is not None:
        console.print(f"# {result.why_several}", soft_wrap=True)
    for command in result.commands:
        console.print(f"# {command.purpose}: run it on the GPU host", soft_wrap=True)
        print(shlex.join(command.argv))


@app.command("gpu-selftest")
def gpu_selftest_command(
    work_dir: Annotated[
        Path, typer.Option("--work-dir", help="Its own store, published repository and report.json.")
    ] = Path("work/gpu-selftest"),
    data_dir: Annotated[
        Path, typer.Option("--data", help="The calibration, evaluation and prompt sets.")
    ] = Path("calib_data"),
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Inside the serving container on a GPU host: a small model through trtllm-build, gate, publish, tritonserver."""
    from pipeline.commands.selftest import REPORT_NAME, run_selftest
    from pipeline.output.views import print_selftest

    Invocation.debug = debug
    report = run_selftest(work_dir, data_dir.absolute(), reporter=_reporter(as_json))
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        print_selftest(_console(), report, work_dir / REPORT_NAME)
    if report.error is not None:
        raise report.error
