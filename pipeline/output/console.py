"""Terminal output: the rich reporter, the summary table, the one-line error."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from pipeline.core.reporter import ProgressUpdate
from pipeline.execution.results import TaskResult, TaskState

# In a log (no terminal), rich would wrap at 80 columns and split paths over lines; a CI log
# scrolls sideways instead. COLUMNS, when set, still wins.
LOG_WIDTH = 400


def make_console(stderr: bool = False) -> Console:
    """A console for a command's output: the terminal's width, or LOG_WIDTH in a log."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    return console


STATE_STYLE = {
    TaskState.up_to_date: "green",
    TaskState.ran: "bold green",
    TaskState.stale: "yellow",
    TaskState.missing: "yellow",
    TaskState.modified: "bold yellow",
    TaskState.failed: "bold red",
    TaskState.rejected: "bold red",
    TaskState.blocked: "red",
}


class _Amount(ProgressColumn):
    """Bytes for a download, a count for anything else (bars of both kinds share one display)."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes, self._count = DownloadColumn(), MofNCompleteColumn()

    def render(self, task: Task) -> RenderableType:
        return (self._bytes if task.fields.get("unit") == "B" else self._count).render(task)


class RichReporter:
    """Messages, and every open progress bar in one live display (tasks of a Ray run report at once)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bars: Progress | None = None
        self._open = 0

    def info(self, message: str) -> None:
        self.console.print(f"[cyan]•[/] {escape(message)}", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]WARNING[/] {escape(message)}", highlight=False)

    @contextmanager
    def progress(self, description: str, total: float | None, unit: str = "it") -> Iterator[ProgressUpdate]:
        if self._bars is None:
            self._bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                _Amount(),
                TimeRemainingColumn(),
                console=self.console,
                transient=not self.console.is_terminal,
            )
            self._bars.start()
        bars = self._bars
        self._open += 1
        task_id = bars.add_task(escape(description), total=total, unit=unit)
        try:
            yield lambda n: bars.advance(task_id, n)
        finally:
            self._open -= 1
            if self._open == 0:
                bars.stop()
                self._bars = None


def results_table(title: str, results: list[TaskResult]) -> Group:
    # The title on a line of its own: a table's title wraps at the table's width, which would
    # split a work dir's path in a log.
    table = Table()
    table.add_column("task", no_wrap=True)
    for column in ("state", "key", "time", "detail"):
        table.add_column(column, overflow="fold")
    for r in results:
        detail = r.summary if r.state in (TaskState.up_to_date, TaskState.ran) else (r.summary or r.reason)
        if r.state in (TaskState.stale, TaskState.modified):
            detail = r.reason
        table.add_row(
            escape(r.task.id),
            f"[{STATE_STYLE[r.state]}]{r.state.value}[/]",
            r.key[:12],
            f"{r.duration_s:.1f}s" if r.duration_s else "",
            escape(detail),
        )
    return Group(Text(title, style="italic"), table)
