"""The trtllm-pipeline command line: options in, typed config and library calls, output out.

Exit codes are decided in one place, `main`. Heavy modules (torch, pydantic
models, stages) are imported inside commands so `--help` stays instant.
"""

from __future__ import annotations

import errno
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="trtllm-pipeline",
    help="Hugging Face LLM -> INT8 TensorRT-LLM engines -> accuracy gate -> Triton model repository.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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


class _State:
    debug = False
    argv: list[str] = []  # this invocation's arguments (bench --nsys runs them again under nsys)
    work_dir: Path | None = None  # where a failed write that names no file was writing


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _run_stages(
    stages: set[str],
    *,
    config_path: Path | None,
    work_dir: Path,
    force: bool,
    debug: bool,
    as_json: bool,
    no_wait: bool,
    precisions: list[str] | None,
    profiles: list[str] | None,
    allow_arch_mismatch: bool = False,
    visualize: bool = False,
    dry_run: bool = False,
    mount_path: str | None = None,
    executor: str | None = None,
    ray_address: str | None = None,
) -> None:
    from pipeline.core.errors import ConfigError, GateFailedError, InputError
    from pipeline.core.paths import dir_problem
    from pipeline.core.store import ArtifactStore
    from pipeline.execution.driver import execute, to_run
    from pipeline.facts.config import input_file_problems, load_config
    from pipeline.output.console import RichReporter, results_table
    from pipeline.output.run_report import write_run_junit, write_run_report
    from pipeline.planning.tasks import ENGINE_STAGES, plan_tasks, select_tasks
    from pipeline.stages.base import RunOptions
    from pipeline.stages.build import preflight as build_preflight

    _State.debug = debug
    _State.work_dir = work_dir
    config = load_config(config_path)
    if visualize:
        config = config.model_copy(update={"build": config.build.model_copy(update={"visualize": True})})
    config = _overridden(
        config,
        "publish",
        {"mount_path": ("--mount-path", mount_path)},
        hint="give the absolute path where the container (or the host) sees the published version",
    )
    config = _overridden(
        config,
        "execution",
        {"executor": ("--executor", executor), "ray_address": ("--ray-address", ray_address)},
    )
    tasks = select_tasks(
        plan_tasks(config), stages, precisions=set(precisions or ()), profiles=set(profiles or ())
    )
    _check_filters(config, precisions, profiles)
    for field, problem in input_file_problems(config, {t.stage for t in tasks}):
        raise ConfigError(config.source, field, problem)
    problem = dir_problem(work_dir)
    if problem is not None:
        raise InputError(f"--work-dir {work_dir}: {problem}", hint="point --work-dir at a writable folder")
    if dry_run:
        _print_dry_run(
            config, ArtifactStore(work_dir), tasks, frozenset(stages) if force else frozenset(), as_json
        )
        return
    console = _console()
    # With --json, stdout carries only the report; progress and messages go to stderr.
    reporter = RichReporter(_console(stderr=as_json))
    store = ArtifactStore(work_dir)
    with store.lock(
        wait=not no_wait, on_wait=lambda p: reporter.info(f"waiting for another run holding {p}")
    ):
        for action in store.recover():
            reporter.warn(action)
        options = RunOptions(allow_arch_mismatch=allow_arch_mismatch, debug=debug)
        force_stages = frozenset(stages) if force else frozenset()
        on_ray = config.execution.executor == "ray"
        # A GPU build this host cannot do fails here, before any stage runs (not after calibration);
        # on Ray the builds run on other hosts, which check themselves.
        build_preflight(
            config, store, tasks, options, force=force and bool(ENGINE_STAGES & stages), check_host=not on_ray
        )
        with ExitStack() as stack:
            runner = None
            if on_ray:
                from pipeline.execution.ray_cluster import ray_runner

                runner = stack.enter_context(
                    ray_runner(config, store, to_run(config, store, tasks, force_stages))
                )
            report = execute(
                config,
                store,
                tasks,
                reporter=reporter,
                force_stages=force_stages,
                options=options,
                runner=runner,
            )
        for action in store.recover():  # what a worker killed mid-task left (never read, now removed)
            reporter.warn(action)
    report_path = work_dir / "reports" / "run.json"
    try:
        write_run_report(report_path, report)
        write_run_junit(work_dir / "reports" / "run.junit.xml", report)
    except OSError as exc:  # a full disk: the run's own error, if any, is the one to show
        if report.error is None:
            raise
        reporter.warn(f"could not write the run report {report_path}: {exc.strerror}")
        raise report.error from None
    if as_json:
        print(report_path.read_text())
    else:
        console.print(
            results_table(
                f"trtllm-pipeline ({config.model.name} on {config.target.gpu}, {config.target.backend})",
                report.results,
            )
        )
        console.print(f"report: {report_path}")
    if report.error is not None:
        raise report.error
    if report.rejected:
        ids = ", ".join(r.task.id for r in report.rejected)
        raise GateFailedError(f"accuracy gate failed for {ids}", hint="see gate.md in each gate artifact")


def _print_dry_run(config, store, tasks, force_stages: frozenset[str], as_json: bool) -> None:
    import shlex

    from rich.markup import escape

    from pipeline.commands.dryrun import plan_run
    from pipeline.core.errors import InputError
    from pipeline.planning.memory import find_architecture
    from pipeline.stages.build import fetched_model_dir

    try:
        arch = find_architecture(config, fetched_model_dir(config, store))
    except InputError:
        arch = None  # an unknown hub model before its fetch: the plan says the argv needs it
    dry = plan_run(config, store, tasks, arch, force_stages=force_stages)
    if as_json:
        print(dry.model_dump_json(indent=2))
        return
    console = _console()
    console.print(
        f"dry run: {escape(config.model.name)} on {config.target.gpu} ({config.target.backend}); nothing runs"
    )
    for task in dry.tasks:
        mark = "[yellow]would run[/]" if task.would_run else "[green]skip[/]"
        console.print(f"{mark} {escape(task.id)}: {escape(task.reason)}")
        for command in task.commands:
            console.print(f"    $ {escape(shlex.join(command.argv))}", soft_wrap=True)
            for note in command.notes:
                console.print(f"      [dim]{escape(note)}[/]", soft_wrap=True)
    for command in dry.serve:
        console.print(
            f"then, to {escape(command.purpose)}:\n    $ {escape(shlex.join(command.argv))}", soft_wrap=True
        )


def _overridden(config, section: str, options: dict[str, tuple[str, object]], hint: str | None = None):
    """config with fields of one section replaced by command-line options, validated by the config's
    own rules; `options`: field -> (option name, value), None values left out."""
    from pydantic import ValidationError

    from pipeline.core.errors import InputError

    changes = {field: value for field, (_, value) in options.items() if value is not None}
    if not changes:
        return config
    current = getattr(config, section)
    try:
        replaced = type(current).model_validate({**current.model_dump(), **changes})
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        option, value = options[field]
        raise InputError(f"{option} {value}: {exc.errors()[0]['msg']}", hint=hint) from None
    return config.model_copy(update={section: replaced})


def _check_filters(config, precisions: list[str] | None, profiles: list[str] | None) -> None:
    from pipeline.core.errors import InputError

    known_precisions = {p.value for p in config.quantization.precisions}
    for p in precisions or ():
        if p not in known_precisions:
            raise InputError(
                f"--precision {p}: not in the config's precisions ({', '.join(sorted(known_precisions))})"
            )
    known_profiles = {p.name for p in config.profiles}
    for p in profiles or ():
        if p not in known_profiles:
            raise InputError(
                f"--profile {p}: not in the config's profiles ({', '.join(sorted(known_profiles))})"
            )


def _stage_command(stage_names: set[str], name: str, help_text: str) -> None:
    def command(
        config: ConfigOpt = None,
        work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
        force: ForceOpt = False,
        debug: DebugOpt = False,
        as_json: JsonOpt = False,
        no_wait: NoWaitOpt = False,
        precision: PrecisionOpt = None,
        profile: ProfileOpt = None,
        allow_arch_mismatch: ArchOpt = False,
        visualize: VisualizeOpt = False,
        dry_run: DryRunOpt = False,
        mount_path: MountPathOpt = None,
        executor: ExecutorOpt = None,
        ray_address: RayAddressOpt = None,
    ) -> None:
        _run_stages(
            stage_names,
            config_path=config,
            work_dir=work_dir,
            force=force,
            debug=debug,
            as_json=as_json,
            no_wait=no_wait,
            precisions=precision,
            profiles=profile,
            allow_arch_mismatch=allow_arch_mismatch,
            visualize=visualize,
            dry_run=dry_run,
            mount_path=mount_path,
            executor=executor,
            ray_address=ray_address,
        )

    command.__doc__ = help_text
    app.command(name)(command)


_stage_command({"fetch"}, "fetch", "Download the pinned model revision (safetensors only, verified).")
_stage_command(
    {"calibrate"}, "calibrate", "Calibrate INT8 with ModelOpt and export TensorRT-LLM checkpoints."
)
_stage_command({"build"}, "build", "Build one engine per precision x profile (after the memory plan).")
_stage_command({"gate"}, "gate", "Measure accuracy against the unquantized model; exit 1 below thresholds.")
_stage_command({"publish"}, "publish", "Write the Triton model repository (requires a passing gate).")
_stage_command(
    {"fetch", "calibrate", "build", "gate_engine", "gate", "publish"},
    "run",
    "Run every stage that is not up to date.",
)


@app.command("status")
def status_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show each stage as up to date, modified (which file), stale (and why) or missing."""
    from pipeline.core.store import ArtifactStore
    from pipeline.execution.driver import status
    from pipeline.facts.config import load_config
    from pipeline.output.console import results_table
    from pipeline.output.run_report import task_row
    from pipeline.planning.tasks import plan_tasks

    _State.debug = debug
    cfg = load_config(config)
    results = status(cfg, ArtifactStore(work_dir), plan_tasks(cfg))
    if as_json:
        print(json.dumps([task_row(r) for r in results], indent=2))
    else:
        _console().print(results_table(f"status of {work_dir}", results))


@app.command("verify")
def verify_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check every artifact and every published version against its manifest; exit 2 if any differs."""
    from pipeline.commands.verify import audit
    from pipeline.core.errors import IntegrityError
    from pipeline.core.store import ArtifactStore
    from pipeline.facts.config import load_config

    _State.debug = debug
    cfg = load_config(config)
    report = audit(ArtifactStore(work_dir), cfg.publish.destination)
    if as_json:
        print(json.dumps({"ok": report.ok, **report.model_dump(mode="json")}, indent=2))
    else:
        from rich.markup import escape

        console = _console()
        for finding in report.findings:
            console.print(f"[red]{escape(finding.problem)}[/]  {escape(finding.path)}")
        console.print(
            f"{report.artifacts} artifacts in {work_dir}, {report.published} published versions in "
            f"{cfg.publish.destination}: {'all intact' if report.ok else f'{len(report.findings)} problems'}"
        )
    if not report.ok:
        first = report.findings[0]
        raise IntegrityError(
            f"verify found {len(report.findings)} problem(s); first: {first.path}: {first.problem}",
            hint="`trtllm-pipeline run` sets a modified artifact aside, rebuilds it and publishes a fresh version",
        )


@app.command("plan")
def plan_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    target: Annotated[
        list[str] | None, typer.Option("--target", help="Plan for this target too (repeatable).")
    ] = None,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Memory and speed plan per target and profile (pure arithmetic, no GPU needed)."""
    from pipeline.core.errors import ConfigError, InputError
    from pipeline.core.store import ArtifactStore
    from pipeline.facts.config import load_config
    from pipeline.facts.targets import TARGETS
    from pipeline.planning.memory import find_architecture, plan_config
    from pipeline.stages.build import fetched_model_dir

    _State.debug = debug
    cfg = load_config(config)
    for name in target or ():
        if name not in TARGETS:
            raise InputError(f"--target {name}: unknown target; known: {', '.join(TARGETS)}")
    try:  # the built-in table or the tiny spec: no store look-up, so the plan stays instant
        arch = find_architecture(cfg)
    except InputError:  # an unknown hub model: its fetched config.json, if fetched already
        arch = find_architecture(cfg, fetched_model_dir(cfg, ArtifactStore(work_dir)))
    plans = plan_config(cfg, arch, tuple(dict.fromkeys([cfg.target.gpu, *(target or ())])))
    if as_json:
        rows = [p.model_dump(mode="json") for p in plans]
        print(json.dumps({"model": cfg.model.name, "architecture": arch.source, "plans": rows}, indent=2))
    else:
        from pipeline.output.plan_table import plan_view

        _console().print(plan_view(f"plan: {cfg.model.name} ({arch.source})", plans))
    unfit = next((p for p in plans if p.target == cfg.target.gpu and not p.fits), None)
    if unfit is not None:  # the build would refuse it: so does the plan, for CI
        index = [p.name for p in cfg.profiles].index(unfit.profile)
        raise ConfigError(
            cfg.source, f"profiles[{index}]", f"'{unfit.profile}' ({unfit.precision}): {unfit.problem}"
        )


@app.command("bench")
def bench_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder. Default: WORK_DIR/reports/bench.")
    ] = None,
    precision: PrecisionOpt = None,
    profile: ProfileOpt = None,
    input_len: Annotated[
        int, typer.Option("--input-len", min=1, help="Prompt tokens (clamped to each profile).")
    ] = 128,
    output_len: Annotated[
        int, typer.Option("--output-len", min=2, help="Output tokens per request (clamped to each profile).")
    ] = 128,
    latency_runs: Annotated[int, typer.Option("--latency-runs", min=1, help="Batch-1 runs per engine.")] = 5,
    batch_size: Annotated[
        list[int] | None,
        typer.Option(
            "--batch-size", min=1, help="Throughput batch size (repeatable). Default: 1, 2, 4... max."
        ),
    ] = None,
    server_url: Annotated[
        str | None,
        typer.Option(
            "--server-url",
            help="Measure the Triton server serving the selected engine (e.g. http://localhost:8000) "
            "with concurrent streamed requests, instead of loading the engine here.",
        ),
    ] = None,
    concurrency: Annotated[
        list[int] | None,
        typer.Option(
            "--concurrency", min=1, help="Served: concurrent clients (repeatable). Default: 1, 2, 4... max."
        ),
    ] = None,
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
    from pipeline.bench.run import run_bench
    from pipeline.bench.summary import summary_table
    from pipeline.bench.workload import BenchSettings
    from pipeline.core.store import ArtifactStore
    from pipeline.facts.config import load_config
    from pipeline.output.console import RichReporter

    _State.debug = debug
    cfg = load_config(config)
    _check_filters(cfg, precision, profile)
    out_dir = out or work_dir / "reports" / "bench"
    if nsys:
        _profile_bench(out_dir)
    settings = BenchSettings(
        input_len=input_len,
        output_len=output_len,
        latency_runs=latency_runs,
        batch_sizes=tuple(batch_size) if batch_size else None,
        server_url=server_url,
        concurrency=tuple(concurrency) if concurrency else None,
    )
    console = _console()
    # With --json, stdout carries only the report; progress and messages go to stderr.
    reporter = RichReporter(_console(stderr=as_json))
    store = ArtifactStore(work_dir)
    # Held so that no build replaces an engine while it is measured, nor competes for the machine.
    with store.lock(
        wait=not no_wait, on_wait=lambda p: reporter.info(f"waiting for another run holding {p}")
    ):
        report, paths = run_bench(
            cfg,
            store,
            settings=settings,
            out_dir=out_dir,
            reporter=reporter,
            precisions=set(precision or ()),
            profiles=set(profile or ()),
        )
    if as_json:
        print(paths["json"].read_text())
    else:
        console.print(summary_table(report))
        console.print(f"report: {paths['markdown']} (bench.json, plots beside it)")


def _profile_bench(out_dir: Path) -> None:
    """Run this bench again under `nsys profile`; exits with the child's code."""
    import shlex
    import subprocess

    from pipeline.bench.nsys import REPORT_NAME, find_nsys, profiled_argv
    from pipeline.core.errors import StageError

    argv = profiled_argv(find_nsys(), out_dir, _State.argv)
    out_dir.mkdir(parents=True, exist_ok=True)
    err = _console(stderr=True)
    err.print(f"recording with Nsight Systems: {shlex.join(argv)}", soft_wrap=True)
    # Not proc.run_tool: the child is this command, whose progress, summary and one-line errors
    # belong on this terminal, and whose exit code is the answer.
    code = subprocess.run(argv, check=False).returncode
    if code == 0:
        if not (out_dir / REPORT_NAME).is_file():
            raise StageError("bench", f"nsys exited 0 but wrote no {out_dir / REPORT_NAME}")
        err.print(f"profile: {out_dir / REPORT_NAME}", soft_wrap=True)
    raise typer.Exit(code)


calib_data_app = typer.Typer(
    help="Calibration and evaluation data sets (JSONL + manifest) in calib_data/.", no_args_is_help=True
)
app.add_typer(calib_data_app, name="calib-data")
CalibDirOpt = Annotated[Path, typer.Option("--out", help="Folder the data sets are written to.")]


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

    _State.debug = debug
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
    prompts: Annotated[int, typer.Option("--prompts", min=1, help="How many of gate.prompts to send.")] = 2,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", min=1, help="Tokens per answer. Default: gate.max_new_tokens."),
    ] = None,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Serve each published repository on a real tritonserver; its answers must equal the reference runtime's."""
    from pipeline.core.errors import StageError
    from pipeline.facts.config import load_config
    from pipeline.output.console import RichReporter
    from pipeline.serving.smoke import smoke_published

    _State.debug = debug
    cfg = load_config(config)
    _check_filters(cfg, precision, profile)
    console = _console()
    reports = smoke_published(
        cfg,
        work_dir=work_dir,
        reporter=RichReporter(console),
        precisions=set(precision or ()),
        profiles=set(profile or ()),
        prompts=prompts,
        max_tokens=max_tokens,
    )
    if as_json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        from rich.markup import escape

        for report in reports:
            for check in report.checks:
                mark = "[green]ok[/]" if check.ok else "[red]DIFFERS[/]"
                console.print(
                    f"{mark} {check.route}: {escape(repr(check.prompt))} -> {escape(repr(check.got))}"
                )
        if reports and reports[-1].checks:
            last = reports[-1].checks[0]
            console.print(f"generated answer: {escape(last.prompt)}[bold]{escape(last.got)}[/]")
    failures = [c for r in reports for c in r.failures]
    if failures:
        first = failures[0]
        raise StageError(
            "smoke",
            f"{len(failures)} answer(s) differ from the reference runtime; first, {first.route}: "
            f"expected {first.expected!r}, got {first.got!r}",
        )


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
    from rich.markup import escape
    from rich.table import Table

    from pipeline.commands.selftest import REPORT_NAME, STAGE, run_selftest
    from pipeline.core.errors import StageError
    from pipeline.output.console import RichReporter

    _State.debug = debug
    console = _console()
    report = run_selftest(work_dir, data_dir.absolute(), reporter=RichReporter(_console(stderr=as_json)))
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        table = Table(
            title=f"gpu-selftest: {report.gpu or 'no GPU'} -> {report.target or '-'}", title_justify="left"
        )
        for column in ("check", "result", "time", "detail"):
            table.add_column(column, overflow="fold")
        for check in report.checks:
            result = {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "[yellow]skipped[/]"}[
                check.ok
            ]
            time_s = f"{check.duration_s:.1f}s" if check.duration_s else ""
            table.add_row(escape(check.name), result, time_s, escape(check.detail))
        console.print(table)
        console.print(f"report: {work_dir / REPORT_NAME}")
    if report.error is not None:
        raise report.error
    if not report.ok:
        failed = [c for c in report.checks if c.ok is False]
        raise StageError(STAGE, f"{len(failed)} check(s) failed; first, {failed[0].name}: {failed[0].detail}")


def _print_error(exc: BaseException) -> None:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False)
    message = getattr(exc, "message", str(exc))
    err.print(f"[bold red]ERROR[/] {escape(message)}", soft_wrap=True)
    hint = getattr(exc, "hint", None)
    if hint:
        err.print(f"[cyan]TIP[/] {escape(hint)}", soft_wrap=True)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread, once: the stack unwinds (temp folders
    removed, the lock released, the run report written) and `main` returns 128 + the signal. A second
    signal while that cleanup runs is ignored, so the cleanup finishes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from pipeline.core.errors import Interrupted

    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def _config_deprecations_shown() -> Iterator[None]:
    """A config that says something the old way still loads (the library warns with a
    ConfigDeprecationWarning): each such warning is one WARNING line on stderr, every time.
    Other warnings are shown as Python shows them."""
    import warnings

    from rich.console import Console
    from rich.markup import escape

    from pipeline.core.errors import ConfigDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", ConfigDeprecationWarning)
        python_shows = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if not issubclass(category, ConfigDeprecationWarning):
                python_shows(message, category, filename, lineno, file, line)
                return
            Console(stderr=True, highlight=False).print(
                f"[yellow]WARNING[/] {escape(str(message))}", soft_wrap=True
            )

        warnings.showwarning = show
        yield


def _machine_error(exc: OSError):
    """A write the machine refused (a full disk, a read-only or forbidden path) as a typed error; None
    for any other OSError, which stays a bug."""
    from pipeline.core.errors import DiskSpaceError, InputError

    full = DiskSpaceError.from_error(exc, where=_State.work_dir)
    if full is not None:
        return full
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and exc.filename:
        return InputError(f"cannot write here: {exc.strerror}", path=exc.filename, hint="use a writable path")
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (see README, "Exit codes")."""
    from pipeline.core.errors import ExitCode, Interrupted, PipelineError

    _State.debug = False
    _State.work_dir = None
    _State.argv = list(argv if argv is not None else sys.argv[1:])
    try:
        with _signals_interrupt(), _config_deprecations_shown():
            # Without standalone mode click returns a typer.Exit's code (bench --nsys: the child's), and
            # typer turns a KeyboardInterrupt it sees into the return value 130.
            code = app(args=_State.argv, prog_name="trtllm-pipeline", standalone_mode=False)
        return code if isinstance(code, int) else int(ExitCode.OK)
    except PipelineError as exc:
        if _State.debug:
            import traceback

            traceback.print_exc()
        _print_error(exc)
        return int(exc.exit_code)
    except Interrupted as exc:
        _print_error(exc)
        return int(exc.exit_code)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, bad value
        show = getattr(exc, "show", None)
        show() if show else _print_error(exc)
        return int(ExitCode.BAD_INPUT)
    except (KeyboardInterrupt, typer.Abort):
        _print_error(RuntimeError("interrupted; the store keeps only complete artifacts"))
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug: say so in one line, traceback with --debug
        if _State.debug:
            raise
        typed = _machine_error(exc) if isinstance(exc, OSError) else None
        if typed is not None:
            _print_error(typed)
            return int(typed.exit_code)
        _print_error(
            RuntimeError(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            )
        )
        return int(ExitCode.INTERNAL)
