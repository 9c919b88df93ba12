"""`trtllm-pipeline run` (and each stage command) as a library verb: `run_pipeline`.

From a loaded config and a `RunRequest` (which stages, filters, overrides) to a written run
report: the request is checked against the config before anything runs (`prepare`), then the
work dir is locked, what a killed run left is recovered, the build preflight fails a host that
cannot build in seconds, the tasks run (here or on Ray) and reports/run.json and run.junit.xml
are written. The dry run (`pipeline.commands.dryrun`) reads the same `prepare`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pipeline.commands.checks import check_filters, check_work_dir
from pipeline.core.errors import ConfigError, GateFailedError, InputError, PipelineError
from pipeline.core.reporter import Reporter
from pipeline.core.store import ArtifactStore
from pipeline.core.tools import ToolRunner
from pipeline.execution.driver import execute, to_run
from pipeline.execution.inprocess import InProcessTaskRunner
from pipeline.execution.results import RunReport
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig, input_file_problems
from pipeline.output.run_report import write_run_junit, write_run_report
from pipeline.planning.tasks import ENGINE_STAGES, Task, plan_tasks, select_tasks
from pipeline.stages import STAGES
from pipeline.stages.base import RunOptions, Stage
from pipeline.stages.build import preflight as build_preflight

ALL_STAGES = frozenset(STAGES)


@dataclass(frozen=True)
class RunRequest:
    """What a run is asked to do beyond the config: the stages (and their inputs), which of them
    to rerun though up to date, the filters, and the options that override config fields."""

    stages: frozenset[str] = ALL_STAGES
    force: frozenset[str] = frozenset()
    precisions: frozenset[str] = frozenset()
    profiles: frozenset[str] = frozenset()
    backends: frozenset[str] = frozenset()
    no_wait: bool = False  # fail at once if another run holds the work dir
    allow_arch_mismatch: bool = False
    debug: bool = False
    visualize: bool = False  # build.visualize
    mount_path: str | None = None  # publish.mount_path
    executor: str | None = None  # execution.executor
    ray_address: str | None = None  # execution.ray_address

    @property
    def options(self) -> RunOptions:
        """What the stages read of the request."""
        return RunOptions(allow_arch_mismatch=self.allow_arch_mismatch, debug=self.debug)


@dataclass(frozen=True)
class RunResult:
    report: RunReport
    report_path: Path  # reports/run.json

    @property
    def error(self) -> PipelineError | None:
        """What the run exits with: a task's error, else a rejected gate."""
        if self.report.error is not None:
            return self.report.error
        if self.report.rejected:
            ids = ", ".join(r.task.id for r in self.report.rejected)
            return GateFailedError(
                f"accuracy gate failed for {ids}", hint="see gate.md in each gate artifact"
            )
        return None


def prepare(config: PipelineConfig, work_dir: Path, request: RunRequest) -> tuple[PipelineConfig, list[Task]]:
    """The config with the request's overrides and the tasks it selects; refuses, before anything
    runs, an unknown filter, a missing input file and a work dir that cannot be written."""
    if request.visualize:
        config = config.model_copy(update={"build": config.build.model_copy(update={"visualize": True})})
    config = overridden(
        config,
        "publish",
        {"mount_path": ("--mount-path", request.mount_path)},
        hint="give the absolute path where the container (or the host) sees the published version",
    )
    config = overridden(
        config,
        "execution",
        {"executor": ("--executor", request.executor), "ray_address": ("--ray-address", request.ray_address)},
    )
    tasks = select_tasks(
        plan_tasks(config),
        set(request.stages),
        precisions=set(request.precisions),
        profiles=set(request.profiles),
        backends=set(request.backends),
    )
    check_filters(config, request.precisions, request.profiles, request.backends)
    for field, problem in input_file_problems(config, {t.stage for t in tasks}):
        raise ConfigError(config.source, field, problem)
    check_work_dir(work_dir)
    return config, tasks


def run_pipeline(
    config: PipelineConfig,
    work_dir: Path,
    request: RunRequest = RunRequest(),
    *,
    reporter: Reporter,
    stages: Mapping[str, Stage] = STAGES,
    tools: ToolRunner = subprocess.run,
) -> RunResult:
    """Run every selected task that is not up to date and write the run report. A task's failure
    is in the result (`error`), not raised: the report is written either way."""
    config, tasks = prepare(config, work_dir, request)
    store = ArtifactStore(work_dir)
    with store.lock(
        wait=not request.no_wait, on_wait=lambda p: reporter.info(f"waiting for another run holding {p}")
    ):
        for action in store.recover():
            reporter.warn(action)
        options = request.options
        on_ray = config.execution.executor == "ray"
        # A build this host cannot do fails here, before any stage runs (not after calibration);
        # on Ray the builds run on other hosts, which check themselves.
        build_preflight(
            config,
            store,
            tasks,
            options,
            force=bool(ENGINE_STAGES & request.force),
            check_host=not on_ray,
            runner=tools,
        )
        with ExitStack() as stack:
            if on_ray:
                from pipeline.execution.ray_cluster import ray_runner

                runner = stack.enter_context(
                    ray_runner(config, store, to_run(config, store, tasks, request.force))
                )
            else:
                runner = InProcessTaskRunner(stages, tools=tools)
            report = execute(
                config,
                store,
                tasks,
                reporter=reporter,
                force_stages=request.force,
                options=options,
                runner=runner,
            )
        for action in store.recover():  # what a worker killed mid-task left (never read, now removed)
            reporter.warn(action)
    report_path = layout.reports_dir(work_dir) / layout.RUN_REPORT
    try:
        write_run_report(report_path, report)
        write_run_junit(layout.reports_dir(work_dir) / layout.RUN_JUNIT, report)
    except OSError as exc:  # a full disk: the run's own error, if any, is the one to show
        if report.error is None:
            raise
        reporter.warn(f"could not write the run report {report_path}: {exc.strerror}")
        raise report.error from None
    return RunResult(report, report_path)


def overridden(
    config: PipelineConfig, section: str, options: dict[str, tuple[str, object]], hint: str | None = None
) -> PipelineConfig:
    """config with fields of one section replaced by command-line options, validated by the config's
    own rules; `options`: field -> (option name, value), None values left out."""
    changes = {field: value for field, (_, value) in options.items() if value is not None}
    if not changes:
        return config
    current: BaseModel = getattr(config, section)
    try:
        replaced = type(current).model_validate({**current.model_dump(), **changes})
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        option, value = options[field]
        raise InputError(f"{option} {value}: {exc.errors()[0]['msg']}", hint=hint) from None
    return config.model_copy(update={section: replaced})
