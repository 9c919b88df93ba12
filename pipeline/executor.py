"""Run tasks in order: skip what is up to date and intact, run the rest into the store.

A task's key is the hash of its Fingerprint (stage, stage version, variant,
config section, the content digest of each input artifact, tool versions). A
key chains on content: a task's key is known once its inputs exist, and a
rebuild that writes different bytes makes every task below it stale. Every
artifact is verified against its manifest (one stat per file, a hash where the
stat changed) before it counts as up to date or is used as an input; a
modified one is set aside and rebuilt. `status` walks the same chain without
running or moving anything.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from functools import cache
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

from pipeline.atomic import write_text_atomic
from pipeline.config import PipelineConfig
from pipeline.errors import DiskSpaceError, Interrupted, PipelineError
from pipeline.hashing import fingerprint_key
from pipeline.integrity import TreeCheck
from pipeline.logfile import StageLogHandler
from pipeline.manifest import MANIFEST_NAME, Fingerprint, Manifest, StatKey, list_files
from pipeline.reporting import Reporter
from pipeline.stages import stage_module
from pipeline.stages.base import RunOptions, StageContext, StageModule
from pipeline.store import Artifact, ArtifactStore
from pipeline.tasks import Task


class TaskState(str, Enum):
    up_to_date = "up to date"
    stale = "stale"
    missing = "missing"
    modified = "modified"  # in the store, but its files differ from its manifest (or a published copy does)
    ran = "ran"
    failed = "failed"
    rejected = "rejected"  # ran or cached, but its verdict is not ok (a failed gate)
    blocked = "blocked"  # an input was rejected or failed


@dataclass
class TaskResult:
    task: Task
    key: str
    state: TaskState
    reason: str = ""
    summary: str = ""
    duration_s: float = 0.0
    path: Path | None = None


@dataclass
class RunReport:
    results: list[TaskResult] = field(default_factory=list)
    error: PipelineError | Interrupted | None = None  # Interrupted: SIGINT/SIGTERM ended the task

    @property
    def rejected(self) -> list[TaskResult]:
        return [r for r in self.results if r.state is TaskState.rejected]


@cache
def tool_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


StageLookup = Callable[[str], StageModule]


def fingerprint(
    config: PipelineConfig, task: Task, module: StageModule, inputs: Mapping[str, str]
) -> Fingerprint:
    """The task's fingerprint, given the content digest of each input artifact by stage. Pure."""
    return Fingerprint(
        stage=task.stage,
        stage_version=module.VERSION,
        variant=task.variant_dict,
        config=module.config_section(config, task),
        inputs={t.stage: inputs[t.stage] for t in task.inputs},
        tools={d: tool_version(d) for d in module.TOOLS},
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


def _outside_problems(module: StageModule, artifact: Artifact, trusted: Mapping[StatKey, str]) -> list[str]:
    """For a stage whose outputs also live outside the store (publish): those outputs against their
    manifest; `trusted` holds verified files by stat (their hard links need no hashing)."""
    check_outputs = getattr(module, "check_outputs", None)
    return check_outputs(artifact, trusted) if check_outputs is not None else []


def _verified(
    module: StageModule, store: ArtifactStore, artifact: Artifact, trusted: Mapping[StatKey, str]
) -> tuple[TreeCheck, list[str]]:
    """The artifact against its manifest, then (if it holds) its outside outputs against theirs."""
    check = store.check(artifact)
    outside = _outside_problems(module, artifact, {**trusted, **check.trusted}) if check.ok else []
    return check, outside


def _after_commit(
    module: StageModule,
    config: PipelineConfig,
    store: ArtifactStore,
    task: Task,
    artifact: Artifact,
    reporter: Reporter,
) -> None:
    """The driver's step after a task's artifact is committed or up to date: what the stage shares
    with other tasks (pipeline.stages.base, after_commit)."""
    after_commit = getattr(module, "after_commit", None)
    if after_commit is not None:
        after_commit(config, store, task, artifact, reporter)


def status(
    config: PipelineConfig, store: ArtifactStore, tasks: list[Task], modules: StageLookup = stage_module
) -> list[TaskResult]:
    """Each task as up to date / modified / stale (and why) / missing, without running or moving anything."""
    results = []
    digests: dict[Task, str] = {}
    trusted: dict[StatKey, str] = {}
    for task in tasks:
        module = modules(task.stage)
        waiting = [t for t in task.inputs if t not in digests]
        if waiting:  # its key depends on bytes not built yet
            latest = store.latest(task.stage, task.variant)
            state, reason = (TaskState.missing, "never built") if latest is None else (TaskState.stale, "")
            results.append(TaskResult(task, "", state, reason=reason or _waiting_reason(waiting)))
            continue
        prints = fingerprint(config, task, module, {t.stage: digests[t] for t in task.inputs})
        key = key_of(prints)
        artifact = store.get(task.stage, task.variant, key)
        if artifact is not None:
            check, outside = _verified(module, store, artifact, trusted)
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


def _task_logger(task: Task, log_path: Path) -> tuple[logging.Logger, logging.Handler]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"pipeline.task.{task.id}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = StageLogHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def _run_one(
    module: StageModule,
    config: PipelineConfig,
    store: ArtifactStore,
    task: Task,
    fingerprint: Fingerprint,
    inputs: dict[str, Artifact],
    trusted: Mapping[StatKey, str],
    reporter: Reporter,
    options: RunOptions,
) -> Artifact:
    key = key_of(fingerprint)
    log_path = store.log_path(task.stage, task.variant, key)
    logger, handler = _task_logger(task, log_path)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    try:
        with store.writer(task.stage, task.variant, key) as out_dir:
            ctx = StageContext(
                config=config,
                task=task,
                inputs=inputs,
                out_dir=out_dir,
                final_path=store.slot(task.stage, task.variant) / key,
                work_dir=store.work_dir,
                log=logger,
                log_path=log_path,
                reporter=reporter,
                options=options,
                trusted=trusted,
            )
            logger.info("running %s (key %s)", task.id, key)
            try:
                outcome = module.run(ctx)
            except Exception as exc:  # a full disk, whichever writer hit it (safetensors has its own type)
                written = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
                slot = store.slot(task.stage, task.variant)
                full = DiskSpaceError.from_error(exc, where=slot, written=written)
                if full is None or isinstance(exc, PipelineError):
                    raise
                raise full from exc
            handler.flush()
            shutil.copyfile(log_path, out_dir / "stage.log")
            record = (
                outcome.record.model_dump(mode="json")
                if isinstance(outcome.record, BaseModel)
                else outcome.record
            )
            manifest = Manifest(
                key=key,
                fingerprint=fingerprint,
                ok=outcome.ok,
                summary=outcome.summary,
                record=record,
                files=list_files(out_dir, ctx.known_sha256, ctx.trusted),
                started_at=started,
                finished_at=datetime.now(timezone.utc),
                duration_s=round(time.perf_counter() - t0, 3),
            )
            write_text_atomic(out_dir / MANIFEST_NAME, manifest.model_dump_json(indent=2))
    finally:
        logger.removeHandler(handler)
        handler.close()
    artifact = store.get(task.stage, task.variant, key)
    assert artifact is not None
    return artifact


def _reusable(
    module: StageModule,
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
    existing = store.get(task.stage, task.variant, key)
    if existing is None:
        return None, ""
    if forced:
        return None, "forced"
    check, outside = _verified(module, store, existing, trusted)
    if not check.ok:
        aside = store.set_aside(existing)
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
    modules: StageLookup = stage_module,
) -> RunReport:
    """Bring `tasks` up to date, in order. Stops at the first error; a rejected
    artifact (failed gate) blocks only its own dependents."""
    report = RunReport()
    done: dict[Task, Artifact] = {}
    trusted: dict[StatKey, str] = {}  # every verified file by stat: a hard link to one needs no rehash
    for task in tasks:
        module = modules(task.stage)
        bad_inputs = [t for t in task.inputs if t not in done]
        if bad_inputs:
            report.results.append(
                TaskResult(task, "", TaskState.blocked, reason=f"{bad_inputs[0].id} did not pass")
            )
            continue
        prints = fingerprint(
            config, task, module, {t.stage: done[t].manifest.content_digest for t in task.inputs}
        )
        key = key_of(prints)
        existing, reason = _reusable(
            module, store, task, key, trusted, reporter, forced=task.stage in force_stages
        )
        if existing is not None:
            state = TaskState.up_to_date if existing.manifest.ok else TaskState.rejected
            result = TaskResult(task, key, state, summary=existing.manifest.summary, path=existing.path)
        else:
            if not reason:
                latest = store.latest(task.stage, task.variant)
                reason = "never built" if latest is None else why_stale(latest.manifest.fingerprint, prints)
            reporter.info(f"{task.id}: running ({reason})")
            t0 = time.perf_counter()
            try:
                existing = _run_one(
                    module,
                    config,
                    store,
                    task,
                    prints,
                    {t.stage: done[t] for t in task.inputs},
                    trusted,
                    reporter,
                    options,
                )
            except (PipelineError, Interrupted) as exc:
                report.results.append(
                    TaskResult(
                        task,
                        key,
                        TaskState.failed,
                        reason=reason,
                        summary=exc.message,
                        duration_s=time.perf_counter() - t0,
                    )
                )
                report.error = exc
                return report
            trusted.update(store.check(existing).trusted)
            state = TaskState.ran if existing.manifest.ok else TaskState.rejected
            result = TaskResult(
                task,
                key,
                state,
                reason=reason,
                summary=existing.manifest.summary,
                duration_s=time.perf_counter() - t0,
                path=existing.path,
            )
        if result.state is not TaskState.rejected:
            try:
                _after_commit(module, config, store, task, existing, reporter)
            except (PipelineError, Interrupted) as exc:  # the artifact stays; what it shares did not land
                result.state, result.summary = TaskState.failed, exc.message
                report.results.append(result)
                report.error = exc
                return report
            done[task] = existing
        report.results.append(result)
    return report
