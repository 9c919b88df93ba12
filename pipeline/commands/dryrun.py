"""What `run` would do, running nothing: every task, whether it would run and why, and the argv of
each external command (each build the backend runs outside the pipeline; the server for each
published version).

It reads the task graph, the store (which artifacts exist) and asks each task's backend for the
commands, which builds them with the functions its build calls (pipeline.backends), so what it
shows is what the run would execute. It starts no process, probes no GPU and imports nothing
heavy: it works on any host.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from pipeline.backends import backend_of
from pipeline.backends.base import BuildPaths, PlannedCommand
from pipeline.commands.run import RunRequest, prepare
from pipeline.core.errors import InputError
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import is_kept, status
from pipeline.execution.results import TaskResult, TaskState
from pipeline.execution.scheduler import Schedule
from pipeline.facts import layout
from pipeline.facts.architecture import Architecture
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.gate.tasks import describe_data, task_size
from pipeline.planning.memory import find_architecture
from pipeline.planning.task_time import TaskGateEstimate, estimate_task_gate
from pipeline.planning.tasks import ENGINE_STAGES, Task
from pipeline.stages import STAGES
from pipeline.stages.base import Stage
from pipeline.stages.build import fetched_model_dir
from pipeline.stages.build import preflight as build_preflight

# Where a key stands in a path while it is not known: it hashes the bytes of inputs not built yet.
UNKNOWN_KEY = "<key>"


class PlannedTask(BaseModel):
    id: str
    stage: str
    would_run: bool
    reason: str  # why it would run, or why not
    key: str | None  # None: not known before `key_after` are built
    key_after: list[str] = []  # the inputs (task ids) whose bytes the key hashes, not built yet
    path: str  # the artifact's folder in the store (UNKNOWN_KEY in place of an unknown key)
    commands: list[PlannedCommand] = []


class DryBackend(BaseModel):
    name: str  # the config's [[backends]] name
    runtime: str  # the backend that plays it on the target
    container: str | None  # the image its builds run in and serving uses (None: it needs none)


class DryRun(BaseModel):
    model: str
    target: str
    backends: list[DryBackend]
    tasks: list[PlannedTask]
    serve: list[PlannedCommand]  # after the run: serving each published version
    # gate.tasks: each task's data and size, and the time it costs per model scored (None: no task
    # gate runs, or the model's shape is not known before its fetch)
    task_gate: TaskGateEstimate | None = None

    @property
    def commands(self) -> list[PlannedCommand]:
        return [c for t in self.tasks for c in t.commands]


def _decisions(results: list[TaskResult], force_stages: frozenset[str]) -> dict[Task, tuple[bool, str]]:
    """Whether the driver would run each task, and why: its keep rule (`is_kept`) and its schedule's
    blocking (a rejected artifact blocks what is below it), applied without running; what would run
    is taken to pass."""
    by_task = {r.task: r for r in results}
    schedule = Schedule([r.task for r in results])
    decisions: dict[Task, tuple[bool, str]] = {}
    while ready := schedule.ready():
        for task in ready:
            schedule.start(task)
            result, forced = by_task[task], task.stage in force_stages
            if is_kept(result, forced=forced):
                summary = f" ({result.summary})" if result.summary else ""
                decisions[task] = (False, result.state.value + summary)
            else:
                decisions[task] = (True, "forced" if forced else result.reason or result.state.value)
            if result.state is TaskState.rejected and not forced:
                schedule.stopped(task)
            else:
                schedule.passed(task)
    for task, cause in schedule.blocked():
        decisions[task] = (False, f"blocked: {cause.id} did not pass")
    return decisions


def _artifact_dir(store: ArtifactStore, task: Task, keys: dict[Task, str]) -> Path:
    return store.slot(task.stage, task.variant) / (keys[task] or UNKNOWN_KEY)


def _build_paths(store: ArtifactStore, task: Task, keys: dict[Task, str]) -> BuildPaths:
    """Where the build of `task` would read and write: the artifact of its key, its input's checkpoint."""
    return BuildPaths(
        checkpoint=layout.checkpoint_dir(_artifact_dir(store, task.input("calibrate"), keys)),
        out_dir=_artifact_dir(store, task, keys),
        work_dir=store.work_dir,
    )


def _serve_command(config: PipelineConfig, task: Task) -> PlannedCommand:
    from pipeline.serving.release import CURRENT
    from pipeline.stages.publish import variant_destination

    assert task.backend and task.precision and task.profile, f"{task.id} is not a publish"
    repository = (
        variant_destination(config, task.backend, task.precision, task.profile) / CURRENT
    ).absolute()
    return backend_of(config, task.backend).serve_command(config, task.precision, task.profile, repository)


def plan_run(
    config: PipelineConfig,
    store: ArtifactStore,
    tasks: list[Task],
    arch: Architecture | None,
    *,
    force_stages: frozenset[str] = frozenset(),
    stages: Mapping[str, Stage] = STAGES,
) -> DryRun:
    """The dry run of `tasks` (topological order). arch is None when the model's shape is not known
    before its fetch: the build argv then cannot be planned, and a note says so."""
    results = status(config, store, tasks, stages)
    keys = {r.task: r.key for r in results}
    planned: dict[Task, PlannedTask] = {}
    decisions = _decisions(results, force_stages)
    for result in results:
        task = result.task
        would_run, reason = decisions[task]
        item = PlannedTask(
            id=task.id,
            stage=task.stage,
            would_run=would_run,
            reason=reason,
            key=result.key or None,
            key_after=[] if result.key else [i.id for i in task.inputs if decisions[i][0]],
            path=str(_artifact_dir(store, task, keys)),
        )
        if would_run and task.stage in ENGINE_STAGES:
            assert task.backend is not None
            item.commands += backend_of(config, task.backend).planned_build(
                config, task, arch, _build_paths(store, task, keys)
            )
        planned[task] = item
    return DryRun(
        model=config.model.name,
        target=config.target.gpu,
        backends=[
            DryBackend(name=entry.name, runtime=runtime.name, container=runtime.container(config))
            for entry in config.backends
            for runtime in [backend_of(config, entry.name)]
        ],
        tasks=list(planned.values()),
        serve=[_serve_command(config, t) for t in tasks if t.stage == "publish"],
        task_gate=_task_gate(config, arch, tasks),
    )


def _task_gate(
    config: PipelineConfig, arch: Architecture | None, tasks: list[Task]
) -> TaskGateEstimate | None:
    """The task gate of the gates in `tasks`: each (backend, precision)'s gate engine is scored once."""
    gate = config.gate
    variants = list(dict.fromkeys((t.backend, Precision(t.precision)) for t in tasks if t.stage == "gate"))
    if not gate.tasks or arch is None or not variants:
        return None
    sized = [(t, describe_data(t, gate.task_dir), task_size(t, gate.task_dir)) for t in gate.tasks]
    return estimate_task_gate(config, arch, sized, variants)


def dry_run(config: PipelineConfig, work_dir: Path, request: RunRequest) -> DryRun:
    """`run --dry-run`: what `run_pipeline` would do with the same request, running nothing. It
    refuses what the run would refuse without a GPU: the request, and a profile that cannot fit
    (the host's own checks are the run's)."""
    config, tasks = prepare(config, work_dir, request)
    store = ArtifactStore(work_dir)
    build_preflight(config, store, tasks, request.options, check_host=False)
    try:
        arch = find_architecture(config, fetched_model_dir(config, store))
    except InputError:
        arch = None  # an unknown hub model before its fetch: the plan says the argv needs it
    return plan_run(config, store, tasks, arch, force_stages=request.force)
