"""Which tasks of a graph may start now, given what has finished. Pure: no IO, no clock.

A task is ready once every input has passed. A task that stopped (failed, or was
rejected by its gate) blocks everything below it; `halt` (a failed task) starts
nothing more, while what already runs may finish.
"""

from __future__ import annotations

from pipeline.planning.tasks import Task


class Schedule:
    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks  # in a topological order: ready() keeps it
        self._started: set[Task] = set()
        self._passed: set[Task] = set()
        self._stopped: set[Task] = set()
        self._halted = False

    def ready(self) -> list[Task]:
        """Tasks not started whose inputs have all passed, in the graph's order."""
        if self._halted:
            return []
        return [t for t in self.tasks if t not in self._started and all(i in self._passed for i in t.inputs)]

    def start(self, task: Task) -> None:
        assert task not in self._started, f"{task.id} started twice"
        self._started.add(task)

    def passed(self, task: Task) -> None:
        """Its artifact may be used by the tasks below it."""
        assert task in self._started, f"{task.id} passed without starting"
        self._passed.add(task)

    def stopped(self, task: Task) -> None:
        """It failed or was rejected: the tasks below it never start."""
        assert task in self._started, f"{task.id} stopped without starting"
        self._stopped.add(task)

    def halt(self) -> None:
        """Start nothing more (a task failed)."""
        self._halted = True

    def blocked(self) -> list[tuple[Task, Task]]:
        """Each task that will never start because an input stopped or is blocked, with that input."""
        out: list[tuple[Task, Task]] = []
        not_passing = set(self._stopped)
        for task in self.tasks:
            if task in self._started:
                continue
            cause = next((i for i in task.inputs if i in not_passing), None)
            if cause is not None:
                out.append((task, cause))
                not_passing.add(task)
        return out
