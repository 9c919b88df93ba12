"""The terminal summary of a bench report: one row per engine."""

from __future__ import annotations

from rich.table import Table

from pipeline.bench.report import best_text, gate_verdict, plan_cell, ratio_text, spread_text, variant_label
from pipeline.bench.results import BenchReport
from pipeline.bench.stats import NOISY_RELATIVE_SPREAD


def summary_table(report: BenchReport) -> Table:
    busy = " BUSY MACHINE (load >= CPUs before the bench)" if report.machine.busy_before else ""
    table = Table(
        title=f"bench: {report.model} on {report.target}; {report.runtime}{busy}",
        title_justify="left",
        caption=f"median (min-max of runs); noisy: runs span > {NOISY_RELATIVE_SPREAD:.0%} of the median "
        "or lie apart from the previous bench's (was: its median). "
        "decode: batch 1 after the first token; output: whole generate call, prefill included",
        caption_justify="left",
    )
    for column in (
        "engine",
        "TTFT ms",
        "ITL p50/p99 ms",
        "decode tok/s (b1)",
        "vs ceiling",
        "best output tok/s",
        "peak memory",
        "gate",
    ):
        table.add_column(column, overflow="fold")
    for v in report.variants:
        table.add_row(
            variant_label(v),
            spread_text(v.latency.ttft_ms),
            f"{v.latency.itl.p50_ms:.2f}/{v.latency.itl.p99_ms:.2f}",
            spread_text(v.latency.decode_tokens_per_s),
            plan_cell(report, ratio_text(v.ratios.decode_vs_ceiling)),
            best_text(v),
            f"{v.memory.peak_bytes / 2**30:.2f} GiB ({v.memory.measure})" if v.memory else "n/a",
            gate_verdict(v),
        )
    return table
