"""The protocol every task runner follows (in this process, on a Ray cluster)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pipeline.execution.events import Emit
from pipeline.execution.spec import TaskOutcome, TaskSpec
from pipeline.stages.base import Stage


class TaskRunner(Protocol):
    stages: Mapping[str, Stage]  # what each task runs as, by stage name

    def has_room(self) -> bool:
        """Whether another task may start now."""
        ...

    def start(self, spec: TaskSpec) -> None: ...

    def running(self) -> int:
        """How many started tasks have not ended."""
        ...

    def wait(self, emit: Emit) -> list[TaskOutcome]:
        """Block until at least one started task ends; the running tasks' events go to emit meanwhile."""
        ...

    def cancel(self) -> list[TaskSpec]:
        """Stop every started task (Ctrl-C): none of them commits after this returns. The ones stopped."""
        ...
