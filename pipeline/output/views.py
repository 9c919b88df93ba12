"""What each command prints on a terminal (its --json form is the result's own JSON)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # each command loads only its own result's module
    from pipeline.commands.dryrun import DryRun
    from pipeline.commands.prune import SlotPrune
    from pipeline.commands.selftest import SelftestReport
    from pipeline.commands.verify import AuditReport
    from pipeline.planning.task_time import TaskGateEstimate
    from pipeline.serving.smoke_report import SmokeReport


def print_dry_run(console: Console, dry: DryRun) -> None:
    backends = ", ".join(
        b.name if b.name == b.runtime else f"{b.name} played by {b.runtime}" for b in dry.backends
    )
    console.print(f"dry run: {escape(dry.model)} on {dry.target} ({escape(backends)}); nothing runs")
    for task in dry.tasks:
        mark = "[yellow]would run[/]" if task.would_run else "[green]skip[/]"
        where = f"key known after {', '.join(task.key_after)} run" if task.key_after else task.path
        console.print(
            f"{mark} {escape(task.id)}: {escape(task.reason)} [dim]({escape(where)})[/]", soft_wrap=True
        )
        for command in task.commands:
            console.print(f"    $ {escape(shlex.join(command.argv))}", soft_wrap=True)
            for note in command.notes:
                console.print(f"      [dim]{escape(note)}[/]", soft_wrap=True)
            for file in command.files:
                console.print(f"      {escape(file.path)}:", soft_wrap=True)
                for line in file.text.splitlines():
                    console.print(f"        {escape(line)}", soft_wrap=True)
    if dry.task_gate is not None:
        _print_task_gate(console, dry.task_gate)
    for command in dry.serve:
        console.print(
            f"then, to {escape(command.purpose)}:\n    $ {escape(shlex.join(command.argv))}", soft_wrap=True
        )
        for note in command.notes:
            console.print(f"      [dim]{escape(note)}[/]", soft_wrap=True)


def _print_task_gate(console: Console, estimate: TaskGateEstimate) -> None:
    console.print(f"task gate (lm-evaluation-harness) on {estimate.target}:")
    for task in estimate.tasks:
        size = "size unknown"
        if task.items is not None:
            size = f"{task.items:,} items, {task.requests:,} requests, {task.prefill_tokens:,} prompt tokens"
            if task.generated_tokens:
                size += f", up to {task.generated_tokens:,} generated"
        console.print(
            f"    {escape(task.task)}: {escape(task.data)}; {size} [dim]({escape(task.how)})[/]",
            soft_wrap=True,
        )
    for model in estimate.models:
        console.print(f"    {escape(model.model)}: {_duration(model.seconds)}", soft_wrap=True)
    console.print(
        f"    total: {_duration(estimate.total_s)} [dim]({escape(estimate.note)})[/]", soft_wrap=True
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not known before the tasks' data is read"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def print_audit(console: Console, report: AuditReport, work_dir: Path, destination: Path) -> None:
    for finding in report.findings:
        console.print(f"[red]{escape(finding.problem)}[/]  {escape(finding.path)}", soft_wrap=True)
        console.print(f"  [dim]fix: {escape(finding.fix)}[/]", soft_wrap=True)
    console.print(
        f"{report.artifacts} artifacts in {work_dir}, {report.published} published versions in "
        f"{destination}: {'all intact' if report.ok else f'{len(report.findings)} problems'}"
    )


def print_smoke(console: Console, reports: list[SmokeReport]) -> None:
    for report in reports:
        for check in report.checks:
            mark = "[green]ok[/]" if check.ok else "[red]DIFFERS[/]"
            console.print(f"{mark} {check.route}: {escape(repr(check.prompt))} -> {escape(repr(check.got))}")
    if reports and reports[-1].checks:
        last = reports[-1].checks[0]
        console.print(f"generated answer: {escape(last.prompt)}[bold]{escape(last.got)}[/]")
    rows = [(r, t) for r in reports for t in r.tasks]
    if rows:
        table = Table(title="smoke --tasks: served score against gated score", title_justify="left")
        for column in ("version", "task", "metric", "items", "gated", "served", "allowed", "result"):
            table.add_column(column, overflow="fold")
        for report, t in rows:
            served = "-" if t.served is None else f"{t.served:.4f}"
            result = (
                "[yellow]not scored[/]"
                if t.served is None
                else "[green]ok[/]"
                if t.ok
                else "[bold red]DIFFERS[/]"
            )
            table.add_row(
                escape(str(report.repository)),
                escape(t.task),
                escape(t.metric),
                str(t.samples),
                f"{t.gated:.4f}",
                served,
                f"± {t.allowed:.4f}",
                result,
            )
        console.print(table)
        for t in (t for _, t in rows if t.note):
            console.print(f"{escape(t.task)}: {escape(t.note)}")


def print_selftest(console: Console, report: SelftestReport, report_path: Path) -> None:
    table = Table(
        title=f"gpu-selftest: {report.gpu or 'no GPU'} -> {report.target or '-'}", title_justify="left"
    )
    for column in ("check", "result", "time", "detail"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        result = {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "[yellow]skipped[/]"}[check.ok]
        time_s = f"{check.duration_s:.1f}s" if check.duration_s else ""
        table.add_row(escape(check.name), result, time_s, escape(check.detail))
    console.print(table)
    console.print(f"report: {report_path}")


def print_prune(console: Console, results: list[SlotPrune], dry_run: bool) -> None:
    if not results:
        console.print("nothing published for this config")
        return
    verb = "would remove" if dry_run else "removed"
    table = Table(title=f"prune{' (dry run: nothing removed)' if dry_run else ''}", title_justify="left")
    for column in ("variant", "current", "kept", verb, "freed"):
        table.add_column(column, overflow="fold")
    for r in results:
        versions = ", ".join(map(str, r.removed)) or "-"
        table.add_row(
            escape(str(r.slot)),
            str(r.current),
            ", ".join(map(str, r.kept)),
            versions,
            f"{r.freed_bytes / 1e6:.1f} MB",
        )
    console.print(table)
