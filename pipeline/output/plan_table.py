"""`trtllm-pipeline plan` output: a summary table, then how each figure was obtained."""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from pipeline.planning.memory import ProfilePlan, format_bytes


def summary_table(title: str, plans: list[ProfilePlan]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in (
        "target / backend / precision / profile",
        "batch x seq, tokens",
        "weights, headroom",
        "KV need / budget",
        "largest batch",
        "decode ceiling",
        "fits",
    ):
        table.add_column(column, overflow="fold")
    for p in plans:
        table.add_row(
            escape(f"{p.target} / {p.backend} / {p.precision} / {p.profile}"),
            f"{p.max_batch_size} x {p.max_seq_len}, {p.max_num_tokens}",
            f"{format_bytes(p.weight_bytes)}, {format_bytes(p.headroom_bytes)}",
            f"{format_bytes(p.kv_needed_bytes)} / {format_bytes(p.kv_budget_bytes)}",
            str(p.largest_batch),
            f"{p.decode_ceiling_tok_s:.0f} tok/s",
            "[green]yes[/]" if p.fits else f"[bold red]no[/]: {escape(p.problem or '')}",
        )
    return table


def derivation_table(plan: ProfilePlan) -> Table:
    table = Table(
        title=f"how: {plan.target} / {plan.backend} / {plan.precision} / {escape(plan.profile)} "
        f"(KV cache {plan.kv_cache_dtype})",
        title_justify="left",
    )
    for column in ("figure", "value", "how"):
        table.add_column(column, overflow="fold")
    for line in plan.derivation:
        table.add_row(escape(line.figure), escape(line.value), escape(line.how))
    return table


def plan_view(title: str, plans: list[ProfilePlan]) -> Group:
    return Group(summary_table(title, plans), *(derivation_table(p) for p in plans))
