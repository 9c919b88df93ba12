"""The local runner: one task at a time, in this process, in the graph's order."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from pipeline.core.tools import ToolRunner
from pipeline.execution.events import Emit
from pipeline.execution.spec import TaskOutcome, TaskSpec, run_task
from pipeline.stages import STAGES
from pipeline.stages.base import Stage


class InProcessTaskRunner:
    def __init__(self, stages: Mapping[str, Stage] = STAGES, *, tools: ToolRunner = subprocess.run) -> None:
        self.stages = stages
        self.tools = tools  # how stages run external tools (tests replace the process)
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
        return [run_task(spec, emit, self.stages, tools=self.tools)]

    def cancel(self) -> list[TaskSpec]:
        # A signal interrupts the running task itself: it comes back from wait() as interrupted.
        stopped, self._next = [self._next] if self._next else [], None
        return stopped
