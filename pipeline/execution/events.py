"""What a running task tells the driver, as plain data: the Reporter calls of a stage become events.

A stage reports through `ctx.reporter`; wherever it runs (this process, a Ray worker), that is an
EventReporter whose events reach the driver, which prints them (EventPrinter) and keeps each task's
warnings for the run report. So a worker's progress bars and messages show on the driver's console.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Literal

from pipeline.core.reporter import ProgressUpdate, Reporter


@dataclass(frozen=True)
class Message:
    task: str  # Task.id
    level: Literal["info", "warn"]
    text: str


@dataclass(frozen=True)
class ProgressOpened:
    task: str
    bar: str  # unique across every worker
    description: str
    total: float | None
    unit: str


@dataclass(frozen=True)
class ProgressAdvanced:
    task: str
    bar: str
    amount: float


@dataclass(frozen=True)
class ProgressClosed:
    task: str
    bar: str


Event = Message | ProgressOpened | ProgressAdvanced | ProgressClosed
Emit = Callable[[Event], None]


class EventReporter:
    """The Reporter a stage is given: every call becomes an event for `emit`."""

    def __init__(self, task: str, emit: Emit) -> None:
        self.task = task
        self.emit = emit

    def info(self, message: str) -> None:
        self.emit(Message(self.task, "info", message))

    def warn(self, message: str) -> None:
        self.emit(Message(self.task, "warn", message))

    @contextmanager
    def progress(self, description: str, total: float | None, unit: str = "it") -> Iterator[ProgressUpdate]:
        bar = uuid.uuid4().hex  # unique across workers and retries
        self.emit(ProgressOpened(self.task, bar, description, total, unit))
        try:
            yield lambda amount: self.emit(ProgressAdvanced(self.task, bar, amount))
        finally:
            self.emit(ProgressClosed(self.task, bar))


class EventPrinter:
    """The driver's end: shows each event through the console's Reporter; keeps warnings by task."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.warnings: dict[str, list[str]] = defaultdict(list)
        self._bars: dict[str, tuple[str, AbstractContextManager[ProgressUpdate], ProgressUpdate]] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, Message):
            if event.level == "warn":
                self.warnings[event.task].append(event.text)
                self.reporter.warn(event.text)
            else:
                self.reporter.info(event.text)
        elif isinstance(event, ProgressOpened):
            bar = self.reporter.progress(event.description, event.total, event.unit)
            self._bars[event.bar] = (event.task, bar, bar.__enter__())
        elif isinstance(event, ProgressAdvanced):
            if event.bar in self._bars:
                self._bars[event.bar][2](event.amount)
        elif event.bar in self._bars:
            self._bars.pop(event.bar)[1].__exit__(None, None, None)

    def close_bars(self, task: str) -> None:
        """Close the bars a task left open (its worker died, or was cancelled, before closing them)."""
        for bar in [b for b, (owner, _, _) in self._bars.items() if owner == task]:
            self._bars.pop(bar)[1].__exit__(None, None, None)
