"""The trtllm-pipeline command line: options in, typed config and library calls, output out.

Exit codes are decided in one place, `main`. Heavy modules (torch, pydantic
models, stages) are imported inside commands so `--help` stays instant.
"""

from __future__ import annotations

import json
import sys
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

DEFAULT_WORK_DIR = Path("work")


class _State:
    debug = False


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


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
) -> None:
    from pipeline.config import load_config
    from pipeline.console import RichReporter, results_table
    from pipeline.errors import GateFailedError
    from pipeline.executor import execute
    from pipeline.report import write_run_report
    from pipeline.stages.base import RunOptions
    from pipeline.store import ArtifactStore
    from pipeline.tasks import plan_tasks, select_tasks

    _State.debug = debug
    config = load_config(config_path)
    tasks = select_tasks(
        plan_tasks(config), stages, precisions=set(precisions or ()), profiles=set(profiles or ())
    )
    _check_filters(config, precisions, profiles)
    console = _console()
    reporter = RichReporter(console)
    store = ArtifactStore(work_dir)
    with store.lock(
        wait=not no_wait, on_wait=lambda p: reporter.info(f"waiting for another run holding {p}")
    ):
        for action in store.recover():
            reporter.warn(action)
        report = execute(
            config,
            store,
            tasks,
            reporter=reporter,
            force_stages=frozenset(stages) if force else frozenset(),
            options=RunOptions(allow_arch_mismatch=allow_arch_mismatch, debug=debug),
        )
    report_path = write_run_report(work_dir / "reports" / "run.json", report)
    if as_json:
        print(report_path.read_text())
    else:
        console.print(
            results_table(f"trtllm-pipeline ({config.model.name} on {config.target.gpu})", report.results)
        )
        console.print(f"report: {report_path}")
    if report.error is not None:
        raise report.error
    if report.rejected:
        ids = ", ".join(r.task.id for r in report.rejected)
        raise GateFailedError(f"accuracy gate failed for {ids}", hint="see gate.md in each gate artifact")


def _check_filters(config, precisions: list[str] | None, profiles: list[str] | None) -> None:
    from pipeline.errors import InputError

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
    {"fetch", "calibrate", "build", "gate", "publish"}, "run", "Run every stage that is not up to date."
)


@app.command("status")
def status_command(
    config: ConfigOpt = None,
    work_dir: WorkDirOpt = DEFAULT_WORK_DIR,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show each stage as up to date, stale (and why) or missing."""
    from pipeline.config import load_config
    from pipeline.console import results_table
    from pipeline.executor import status
    from pipeline.store import ArtifactStore
    from pipeline.tasks import plan_tasks

    _State.debug = debug
    cfg = load_config(config)
    results = status(cfg, ArtifactStore(work_dir), plan_tasks(cfg))
    if as_json:
        rows = [
            {
                "task": r.task.id,
                "stage": r.task.stage,
                **r.task.variant_dict,
                "state": r.state.value,
                "key": r.key,
                "reason": r.reason,
                "summary": r.summary,
                "path": str(r.path) if r.path else None,
            }
            for r in results
        ]
        print(json.dumps(rows, indent=2))
    else:
        _console().print(results_table(f"status of {work_dir}", results))


@app.command("plan")
def plan_command(
    config: ConfigOpt = None,
    debug: DebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Memory and speed plan per target and profile (pure arithmetic, no GPU needed)."""
    from pipeline.errors import NotImplementedStageError

    _State.debug = debug
    raise NotImplementedStageError("plan")


def _print_error(exc: BaseException) -> None:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False)
    message = getattr(exc, "message", str(exc))
    err.print(f"[bold red]ERROR[/] {escape(message)}", soft_wrap=True)
    hint = getattr(exc, "hint", None)
    if hint:
        err.print(f"[cyan]TIP[/] {escape(hint)}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (see README, "Exit codes")."""
    from pipeline.errors import ExitCode, PipelineError

    _State.debug = False
    try:
        app(
            args=argv if argv is not None else sys.argv[1:],
            prog_name="trtllm-pipeline",
            standalone_mode=False,
        )
    except PipelineError as exc:
        if _State.debug:
            import traceback

            traceback.print_exc()
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
        _print_error(
            RuntimeError(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            )
        )
        return int(ExitCode.INTERNAL)
    return int(ExitCode.OK)
