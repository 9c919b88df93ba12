"""The terminal summary of a bench report: one row per engine."""

from __future__ import annotations

from rich.table import Table

from pipeline.bench.report import best_point, gate_verdict, ratio_text, variant_label
from pipeline.bench.results import BenchReport


def summary_table(report: BenchReport) -> Table:
    table = Table(title=f"bench: {report.model} on {report.target}; {report.runtime}", title_justify="left")
    for column in (
        "engine",
        "TTFT p50 ms",
        "ITL p50/p99 ms",
        "batch-1 tok/s",
        "vs ceiling",
        "best tok/s",
        "peak memory",
        "gate",
    ):
        table.add_column(column, overflow="fold")
    for v in report.variants:
        best_rate, best_at = best_point(v)
        ratio = v.ratios.decode_vs_ceiling
        table.add_row(
            variant_label(v),
            f"{v.latency.ttft.p50_ms:.1f}",
            f"{v.latency.itl.p50_ms:.2f}/{v.latency.itl.p99_ms:.2f}",
            f"{v.latency.decode_tokens_per_s:.1f}",
            ratio_text(ratio),
            f"{best_rate:.1f} ({best_at})",
            f"{v.memory.peak_bytes / 2**30:.2f} GiB ({v.memory.measure})" if v.memory else "n/a",
            gate_verdict(v),
        )
    return table
