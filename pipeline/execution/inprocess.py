"""The local runner: one task at a time, in this process, in the graph's order."""

from __future__ import annotations

from pipeline.execution.events import Emit
from pipeline.execution.spec import StageLookup, TaskOutcome, TaskSpec, run_task
from pipeline.stages import stage_module


class InProcessTaskRunner:
    def __init__(self, modules: StageLookup = stage_module) -> None:
        self.modules = modules
        self._next: TaskSpec | None = None

    def has_room(self) -> bool:
        return self._next is None

    def start(self, spec: TaskSpec) -> None:
        assert self._next is None, "the in-process runner runs one task at a time"
        self._next = spec

    def running(self) -> int:
        return int(self._next is not None)

    def wait(self, emit: Emit) -> list[TaskOutcome]:
        spec, self._next = self._next, None
        assert spec is not None, "nothing was started"
        return [run_task(spec, emit, self.modules)]

    def cancel(self) -> list[TaskSpec]:
        # A signal interrupts the running task itself: it comes back from wait() as interrupted.
        stopped, self._next = [self._next] if self._next else [], None
        return stopped
