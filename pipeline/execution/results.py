"""What a run tells of each task: its state, key, reason, timing and where it ran; the run's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pipeline.core.errors import Interrupted, PipelineError
from pipeline.planning.tasks import Task


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
    node: str = ""  # where it ran: "local", or the Ray node's address ("" when it did not run)
    warnings: list[str] = field(default_factory=list)  # what the task warned of while it ran
    log: Path | None = None  # the task's log (kept when it failed)


@dataclass
class RunReport:
    results: list[TaskResult] = field(default_factory=list)
    error: PipelineError | Interrupted | None = None  # Interrupted: SIGINT/SIGTERM ended the task

    @property
    def rejected(self) -> list[TaskResult]:
        return [r for r in self.results if r.state is TaskState.rejected]
