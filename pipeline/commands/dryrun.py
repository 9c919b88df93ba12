"""What `run` would do, running nothing: every task, whether it would run and why, and the argv of
each external command (each `trtllm-build`; the server for each published version).

It reads the task graph, the store (which artifacts exist) and the argv planners the stages use
(`pipeline.trtllm.argv`, `pipeline.facts.container.serve_argv`), so what it shows is what the run would
execute. It starts no process, probes no GPU and imports nothing heavy: it works on any host.
Two things only the build host knows are shown as the run would choose them there, with a note:
`--workers` (capped at the visible GPU count) and the TensorRT version in the timing cache's name
(the serving container's).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from pipeline.core.atomic import TMP_PREFIX
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import is_kept, status
from pipeline.execution.results import TaskResult, TaskState
from pipeline.execution.scheduler import Schedule
from pipeline.facts import layout
from pipeline.facts.architecture import Architecture
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.facts.container import SERVING_CONTAINER, serve_argv
from pipeline.facts.targets import TARGETS
from pipeline.planning.memory import plan_profile
from pipeline.planning.tasks import ENGINE_STAGES, Task
from pipeline.stages import STAGES
from pipeline.stages.base import Stage


class PlannedCommand(BaseModel):
    purpose: str
    argv: list[str]
    notes: list[str] = []


class PlannedTask(BaseModel):
    id: str
    stage: str
    would_run: bool
    reason: str  # why it would run, or why not
    commands: list[PlannedCommand] = []


class DryRun(BaseModel):
    model: str
    target: str
    container: str | None  # the image builds run in and serving uses (GPU targets)
    tasks: list[PlannedTask]
    serve: list[PlannedCommand]  # after the run: serving each published version

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


def _build_command(
    config: PipelineConfig, store: ArtifactStore, task: Task, keys: dict[Task, str], arch: Architecture
) -> PlannedCommand:
    from pipeline.trtllm.argv import trtllm_build_argv

    calibrate = task.input("calibrate")
    out_dir = store.slot(task.stage, task.variant) / keys[task]
    plan = plan_profile(config, arch, Precision(task.precision), task.profile)
    target = TARGETS[config.target.gpu]
    argv = trtllm_build_argv(
        layout.checkpoint_dir(store.slot(calibrate.stage, calibrate.variant) / keys[calibrate]),
        layout.engine_dir(out_dir),
        config.profile(task.profile),
        config.build,
        plan,
        layout.timing_cache_path(store.work_dir, config.model.name, target, SERVING_CONTAINER.tensorrt),
        out_dir / layout.TIMING_CACHE,
        workers=config.build.workers or 1,
        visualize_dir=layout.network_dir(out_dir) if config.build.visualize else None,
    )
    notes = [
        f"--output_dir: the run writes {out_dir.parent}/{TMP_PREFIX}{out_dir.name}-*/, renamed to {out_dir.name}/ when whole"
    ]
    if config.build.workers is None:
        notes.append("--workers: one per visible GPU on the build host (1 shown)")
    return PlannedCommand(purpose=f"build the {task.precision}/{task.profile} engine", argv=argv, notes=notes)


def _serve_command(config: PipelineConfig, task: Task) -> PlannedCommand:
    from pipeline.serving.release import CURRENT
    from pipeline.stages.publish import variant_destination

    variant = f"{task.precision}/{task.profile}"
    if not TARGETS[config.target.gpu].is_gpu:
        return PlannedCommand(
            purpose=f"serve and check {variant} on the bundled tritonserver",
            argv=["trtllm-pipeline", "smoke", "--precision", task.precision, "--profile", task.profile],
        )
    repository = (variant_destination(config, task.precision, task.profile) / CURRENT).absolute()
    return PlannedCommand(purpose=f"serve {variant}", argv=serve_argv(repository, config.publish.mount_path))


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
        item = PlannedTask(id=task.id, stage=task.stage, would_run=would_run, reason=reason)
        if would_run and task.stage in ENGINE_STAGES and TARGETS[config.target.gpu].is_gpu:
            if arch is None:
                item.commands.append(
                    PlannedCommand(
                        purpose=f"build the {task.precision}/{task.profile} engine",
                        argv=[],
                        notes=["the argv needs the model's config.json: run `trtllm-pipeline fetch` first"],
                    )
                )
            else:
                item.commands.append(_build_command(config, store, task, keys, arch))
        planned[task] = item
    gpu = TARGETS[config.target.gpu].is_gpu
    return DryRun(
        model=config.model.name,
        target=config.target.gpu,
        container=config.publish.container if gpu else None,
        tasks=list(planned.values()),
        serve=[_serve_command(config, t) for t in tasks if t.stage == "publish"],
    )
