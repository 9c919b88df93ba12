"""The driver: skip what is up to date and intact, start the rest on a task runner, settle results.

A task's key is the hash of its Fingerprint (stage, stage version, variant,
config section, the content digest of each input artifact, tool versions). A
key chains on content: a task's key is known once its inputs exist, and a
rebuild that writes different bytes makes every task below it stale. Every
artifact is verified against its manifest (one stat per file, a hash where the
stat changed) before it counts as up to date or is used as an input; a
modified one is set aside and rebuilt. `status` walks the same chain without
running or moving anything.

Which task may start is pipeline.execution.scheduler's (pure); where it runs is the runner's
(in this process, or on a Ray cluster); the driver keys and verifies every artifact, holds what
tasks share (a stage's after_commit), and reports in the graph's order whatever ran where.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import metadata

from pipeline.core.errors import Interrupted, ModifiedManifestError, PipelineError
from pipeline.core.hashing import fingerprint_key
from pipeline.core.integrity import TreeCheck
from pipeline.core.manifest import Fingerprint, StatKey
from pipeline.core.reporter import Reporter
from pipeline.core.store import Artifact, ArtifactStore
from pipeline.execution.events import EventPrinter
from pipeline.execution.inprocess import InProcessTaskRunner
from pipeline.execution.results import RunReport, TaskResult, TaskState
from pipeline.execution.scheduler import Schedule
from pipeline.execution.spec import TaskOutcome, TaskSpec
from pipeline.execution.task_runner import TaskRunner
from pipeline.facts.config import PipelineConfig
from pipeline.planning.tasks import Task
from pipeline.stages import STAGES
from pipeline.stages.base import RunOptions, Stage


@cache
def tool_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def fingerprint(config: PipelineConfig, task: Task, stage: Stage, inputs: Mapping[str, str]) -> Fingerprint:
    """The task's fingerprint, given the content digest of each input artifact by stage. Pure."""
    return Fingerprint(
        stage=task.stage,
        stage_version=stage.version,
        variant=task.variant_dict,
        config=stage.config_section(config, task),
        inputs={t.stage: inputs[t.stage] for t in task.inputs},
        tools={d: tool_version(d) for d in stage.tools},
    )


def key_of(fingerprint: Fingerprint) -> str:
    return fingerprint_key(fingerprint.model_dump())


def why_stale(old: Fingerprint, new: Fingerprint) -> str:
    """The cheapest-to-read reason a stored artifact no longer matches."""
    if old.stage_version != new.stage_version:
        return f"stage version {old.stage_version} -> {new.stage_version}"
    changed = sorted(k for k in set(old.config) | set(new.config) if old.config.get(k) != new.config.get(k))
    if changed:
        return "config changed: " + ", ".join(changed)
    inputs = sorted(k for k in new.inputs if old.inputs.get(k) != new.inputs[k])
    if inputs:
        return "input changed: " + ", ".join(inputs)
    tools = [f"{k} {old.tools.get(k)} -> {v}" for k, v in new.tools.items() if old.tools.get(k) != v]
    if tools:
        return "tool version changed: " + ", ".join(tools)
    return "fingerprint changed"


def _waiting_reason(waiting: list[Task]) -> str:
    return "input changed: " + ", ".join(sorted({t.stage for t in waiting}))


def _verified(
    stage: Stage, store: ArtifactStore, artifact: Artifact, trusted: Mapping[StatKey, str]
) -> tuple[TreeCheck, list[str]]:
    """The artifact against its manifest, then (if it holds) its outputs outside the store (publish)
    against theirs; `trusted` holds verified files by stat (their hard links need no hashing)."""
    check = store.check(artifact)
    outside = stage.check_outputs(artifact, {**trusted, **check.trusted}) if check.ok else []
    return check, outside


def status(
    config: PipelineConfig, store: ArtifactStore, tasks: list[Task], stages: Mapping[str, Stage] = STAGES
) -> list[TaskResult]:
    """Each task as up to date / modified / stale (and why) / missing, without running or moving anything."""
    results = []
    digests: dict[Task, str] = {}
    trusted: dict[StatKey, str] = {}
    for task in tasks:
        stage = stages[task.stage]
        waiting = [t for t in task.inputs if t not in digests]
        if waiting:  # its key depends on bytes not built yet
            latest = store.latest(task.stage, task.variant)
            state, reason = (TaskState.missing, "never built") if latest is None else (TaskState.stale, "")
            results.append(TaskResult(task, "", state, reason=reason or _waiting_reason(waiting)))
            continue
        prints = fingerprint(config, task, stage, {t.stage: digests[t] for t in task.inputs})
        key = key_of(prints)
        try:
            artifact = store.get(task.stage, task.variant, key)
        except ModifiedManifestError as exc:
            path = exc.artifact
            results.append(TaskResult(task, key, TaskState.modified, reason=exc.problem, path=path))
            continue
        if artifact is not None:
            check, outside = _verified(stage, store, artifact, trusted)
            if not check.ok or outside:
                reason = check.summary() or outside[0]
                results.append(TaskResult(task, key, TaskState.modified, reason=reason, path=artifact.path))
                continue
            trusted.update(check.trusted)
            digests[task] = artifact.manifest.content_digest
            state = TaskState.up_to_date if artifact.manifest.ok else TaskState.rejected
            results.append(
                TaskResult(task, key, state, summary=artifact.manifest.summary, path=artifact.path)
            )
            continue
        latest = store.latest(task.stage, task.variant)
        if latest is None:
            results.append(TaskResult(task, key, TaskState.missing, reason="never built"))
        else:
            reason = why_stale(latest.manifest.fingerprint, prints)
            results.append(TaskResult(task, key, TaskState.stale, reason=reason, path=latest.path))
    return results


def to_run(
    config: PipelineConfig,
    store: ArtifactStore,
    tasks: list[Task],
    force_stages: frozenset[str] = frozenset(),
    stages: Mapping[str, Stage] = STAGES,
) -> list[Task]:
    """The tasks a run would start (not up to date, or forced), as far as the store tells now."""
    return [
        r.task
        for r in status(config, store, tasks, stages)
        if not is_kept(r, forced=r.task.stage in force_stages)
    ]


def is_kept(result: TaskResult, *, forced: bool) -> bool:
    """Whether a run keeps the task's stored artifact as it is (intact, passed or rejected by its
    gate) instead of running it: what `execute` does with an artifact `_reusable` finds."""
    return not forced and result.state in (TaskState.up_to_date, TaskState.rejected)


def _reusable(
    stage: Stage,
    store: ArtifactStore,
    task: Task,
    key: str,
    trusted: dict[StatKey, str],
    reporter: Reporter,
    *,
    forced: bool,
) -> tuple[Artifact | None, str]:
    """The stored artifact for key if it can be used as it is; else None and why it must run ("" when
    there is none: the caller says why). A modified artifact is set aside (kept, named in a warning)."""
    try:
        existing = store.get(task.stage, task.variant, key)
    except ModifiedManifestError as exc:
        aside = store.set_aside(exc.artifact)
        reporter.warn(f"{task.id}: manifest.json {exc.problem}; the modified artifact is kept at {aside}")
        return None, f"modified: manifest.json ({exc.problem})"
    if existing is None:
        return None, ""
    if forced:
        return None, "forced"
    check, outside = _verified(stage, store, existing, trusted)
    if not check.ok:
        aside = store.set_aside(existing.path)
        reporter.warn(f"{task.id}: {check.summary()}; the modified artifact is kept at {aside}")
        return None, check.summary()
    if outside:
        reporter.warn(f"{task.id}: {outside[0]}")
        return None, outside[0]
    trusted.update(check.trusted)
    return store.refresh_stats(existing, check.restat), ""


def execute(
    config: PipelineConfig,
    store: ArtifactStore,
    tasks: list[Task],
    *,
    reporter: Reporter,
    force_stages: frozenset[str] = frozenset(),
    options: RunOptions = RunOptions(),
    stages: Mapping[str, Stage] | None = None,
    runner: TaskRunner | None = None,
) -> RunReport:
    """Bring `tasks` up to date: each starts on `runner` (default: in this process, one at a time,
    as `stages`, default STAGES) once its inputs have passed. A failed task starts nothing more (what
    runs may finish); a rejected artifact (failed gate) blocks only its own dependents. Results come
    in the graph's order."""
    if runner is None:
        runner = InProcessTaskRunner(STAGES if stages is None else stages)
    elif stages is not None:
        raise TypeError("give stages or a runner (which holds its stages), not both")
    # Keyed, verified and shared here as the stages the runner runs them as: one source for both.
    stages = runner.stages
    schedule = Schedule(tasks)
    printer = EventPrinter(reporter)
    report = RunReport()
    done: dict[Task, Artifact] = {}
    trusted: dict[StatKey, str] = {}  # every verified file by stat: a hard link to one needs no rehash
    why: dict[Task, str] = {}

    def settle(result: TaskResult, artifact: Artifact | None) -> None:
        report.results.append(result)
        if result.state in (TaskState.ran, TaskState.up_to_date):
            assert artifact is not None
            try:
                # what the stage shares with other tasks: written here, by the driver only
                stages[result.task.stage].after_commit(config, store, result.task, artifact, reporter)
            except PipelineError as exc:  # the artifact stays; what it shares did not land
                result.state, result.summary = TaskState.failed, exc.message
                report.error = report.error or exc
                schedule.stopped(result.task)
                schedule.halt()
                return
            done[result.task] = artifact
            schedule.passed(result.task)
        else:
            schedule.stopped(result.task)

    try:
        while True:
            reused = False  # a task found up to date may make others ready: look again before waiting
            for task in schedule.ready():
                if not runner.has_room():
                    break
                schedule.start(task)
                stage = stages[task.stage]
                prints = fingerprint(
                    config, task, stage, {t.stage: done[t].manifest.content_digest for t in task.inputs}
                )
                key = key_of(prints)
                existing, reason = _reusable(
                    stage, store, task, key, trusted, reporter, forced=task.stage in force_stages
                )
                if existing is not None:
                    state = TaskState.up_to_date if existing.manifest.ok else TaskState.rejected
                    summary = existing.manifest.summary
                    settle(TaskResult(task, key, state, summary=summary, path=existing.path), existing)
                    reused = True
                    continue
                if not reason:
                    latest = store.latest(task.stage, task.variant)
                    reason = (
                        "never built" if latest is None else why_stale(latest.manifest.fingerprint, prints)
                    )
                why[task] = reason
                reporter.info(f"{task.id}: running ({reason})")
                runner.start(
                    TaskSpec(
                        config=config,
                        task=task,
                        key=key,
                        fingerprint=prints,
                        inputs={t.stage: done[t] for t in task.inputs},
                        work_dir=store.work_dir.absolute(),
                        options=options,
                        trusted=dict(trusted),
                    )
                )
            if reused:
                continue
            if not runner.running():
                break
            for outcome in runner.wait(printer):
                printer.close_bars(outcome.task.id)
                settle(_result_of(outcome, why[outcome.task], store, trusted, printer), outcome.artifact)
                if outcome.error is not None:
                    report.error = report.error or outcome.error
                    schedule.halt()
    except Interrupted as exc:  # a signal while the driver waited on other processes' tasks
        for spec in runner.cancel():
            report.results.append(
                TaskResult(
                    spec.task,
                    spec.key,
                    TaskState.failed,
                    reason=why[spec.task],
                    summary=exc.message,
                    log=spec.log_if_written(),
                )
            )
        report.error = exc
    for task, cause in schedule.blocked():
        report.results.append(TaskResult(task, "", TaskState.blocked, reason=f"{cause.id} did not pass"))
    order = {task: i for i, task in enumerate(tasks)}
    report.results.sort(key=lambda r: order[r.task])
    return report


def _result_of(
    outcome: TaskOutcome,
    reason: str,
    store: ArtifactStore,
    trusted: dict[StatKey, str],
    printer: EventPrinter,
) -> TaskResult:
    """The result of a task a runner ran; its committed artifact is verified before anything uses it."""
    task = outcome.task
    common = dict(
        reason=reason,
        duration_s=outcome.duration_s,
        node=outcome.node,
        warnings=printer.warnings.get(task.id, []),
        log=outcome.log,
    )
    if outcome.error is not None:
        return TaskResult(task, outcome.key, TaskState.failed, summary=outcome.error.message, **common)
    artifact = outcome.artifact
    assert artifact is not None
    check = store.check(artifact)
    if not check.ok:
        message = f"{task.id}: committed artifact fails its manifest ({check.summary()})"
        return TaskResult(task, outcome.key, TaskState.failed, summary=message, **common)
    trusted.update(check.trusted)
    state = TaskState.ran if artifact.manifest.ok else TaskState.rejected
    return TaskResult(
        task, outcome.key, state, summary=artifact.manifest.summary, path=artifact.path, **common
    )
