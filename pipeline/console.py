"""Terminal output: the rich reporter, the summary table, the one-line error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pipeline.executor import TaskResult, TaskState
from pipeline.reporting import ProgressUpdate

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


class RichReporter:
    def __init__(self, console: Console) -> None:
        self.console = console

    def info(self, message: str) -> None:
        self.console.print(f"[cyan]•[/] {escape(message)}", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]WARNING[/] {escape(message)}", highlight=False)

    @contextmanager
    def progress(self, description: str, total: float | None, unit: str = "it") -> Iterator[ProgressUpdate]:
        amount = DownloadColumn() if unit == "B" else MofNCompleteColumn()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            amount,
            TimeRemainingColumn(),
            console=self.console,
            transient=not self.console.is_terminal,
        ) as bar:
            task_id = bar.add_task(escape(description), total=total)
            yield lambda n: bar.advance(task_id, n)


def results_table(title: str, results: list[TaskResult]) -> Table:
    table = Table(title=title, title_justify="left")
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
    return table
