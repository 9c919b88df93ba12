"""One task, as a worker runs it: a serialisable spec in, the committed artifact (or the error) out.

The spec holds everything the task needs, so it runs the same in this process or on a Ray node: the
config, the task, its key and fingerprint, its input artifacts (paths and manifests, verified by the
driver), the work dir (absolute, on storage every node mounts) and the run's options. The worker
writes only into its staged folder under the store; the rename into place is the commit.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from pipeline.core.errors import DiskSpaceError, Interrupted, PipelineError
from pipeline.core.logfile import StageLogHandler
from pipeline.core.manifest import Fingerprint, Manifest, StatKey, list_files
from pipeline.core.store import Artifact, ArtifactStore, write_manifest
from pipeline.core.tools import ToolRunner
from pipeline.execution.events import Emit, EventReporter
from pipeline.facts.config import PipelineConfig
from pipeline.planning.tasks import Task
from pipeline.stages.base import RunOptions, Stage, StageContext


@dataclass(frozen=True)
class TaskSpec:
    config: PipelineConfig
    task: Task
    key: str
    fingerprint: Fingerprint
    inputs: dict[str, Artifact]  # by input stage name
    work_dir: Path  # absolute
    options: RunOptions = RunOptions()
    # sha256 of verified files by stat key: a hard link to one of them needs no hashing
    trusted: Mapping[StatKey, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return ArtifactStore(self.work_dir).log_path(self.task.stage, self.task.variant, self.key)

    def log_if_written(self) -> Path | None:
        """The task's log, if it got as far as opening one (a task stopped before it started has none)."""
        return self.log_path if self.log_path.is_file() else None


@dataclass(frozen=True)
class TaskOutcome:
    task: Task
    key: str
    artifact: Artifact | None  # None when it failed
    error: PipelineError | Interrupted | None
    started: float  # time.time(), on the worker
    finished: float
    node: str  # where it ran ("local", or the Ray node's address)
    log: Path | None = None

    @property
    def duration_s(self) -> float:
        return self.finished - self.started


def _task_logger(task: Task, log_path: Path) -> tuple[logging.Logger, logging.Handler]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"pipeline.task.{task.id}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = StageLogHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def run_task(
    spec: TaskSpec,
    emit: Emit,
    stages: Mapping[str, Stage],
    *,
    node: str = "local",
    tools: ToolRunner = subprocess.run,
) -> TaskOutcome:
    """Run the spec's stage into a staged folder and commit it. A PipelineError (or an interrupt)
    comes back in the outcome; anything else is a bug and raises."""
    started = time.time()
    store = ArtifactStore(spec.work_dir)
    log_path = spec.log_path
    try:
        artifact = _run(
            spec, store, log_path, EventReporter(spec.task.id, emit), stages[spec.task.stage], tools
        )
    except (PipelineError, Interrupted) as exc:
        return TaskOutcome(spec.task, spec.key, None, exc, started, time.time(), node, log_path)
    return TaskOutcome(spec.task, spec.key, artifact, None, started, time.time(), node, log_path)


def _run(
    spec: TaskSpec,
    store: ArtifactStore,
    log_path: Path,
    reporter: EventReporter,
    stage: Stage,
    tools: ToolRunner,
) -> Artifact:
    task, key = spec.task, spec.key
    logger, handler = _task_logger(task, log_path)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    try:
        with store.writer(task.stage, task.variant, key) as out_dir:
            ctx = StageContext(
                config=spec.config,
                task=task,
                inputs=dict(spec.inputs),
                out_dir=out_dir,
                work_dir=store.work_dir,
                log=logger,
                log_path=log_path,
                reporter=reporter,
                options=spec.options,
                trusted=spec.trusted,
                tools=tools,
            )
            logger.info("running %s (key %s)", task.id, key)
            try:
                outcome = stage.run(ctx)
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
                fingerprint=spec.fingerprint,
                ok=outcome.ok,
                summary=outcome.summary,
                record=record,
                files=list_files(out_dir, ctx.known_sha256, ctx.trusted),
                started_at=started,
                finished_at=datetime.now(timezone.utc),
                duration_s=round(time.perf_counter() - t0, 3),
            )
            write_manifest(out_dir, manifest)
    finally:
        logger.removeHandler(handler)
        handler.close()
    artifact = store.get(task.stage, task.variant, key)
    assert artifact is not None
    return artifact
