"""How the library tells the outside world what it is doing. The library never prints.

The CLI passes a rich-backed reporter; tests pass a RecordingReporter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

ProgressUpdate = Callable[[float], None]


class Reporter(Protocol):
    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def progress(
        self, description: str, total: float | None, unit: str = "it"
    ) -> AbstractContextManager[ProgressUpdate]:
        """A progress bar; the yielded function advances it by an amount."""
        ...


class RecordingReporter:
    """Keeps every message; progress advances are summed per description."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.advanced: dict[str, float] = {}

    def info(self, message: str) -> None:
        self.messages.append(("info", message))

    def warn(self, message: str) -> None:
        self.messages.append(("warn", message))

    @contextmanager
    def progress(self, description: str, total: float | None, unit: str = "it") -> Iterator[ProgressUpdate]:
        self.advanced.setdefault(description, 0.0)

        def advance(amount: float) -> None:
            self.advanced[description] += amount

        yield advance

    def text(self) -> str:
        return "\n".join(m for _, m in self.messages)
