"""Write a BenchReport as its files: bench.json (versioned), bench.md and the PNG plots."""

from __future__ import annotations

from pathlib import Path

from pipeline.bench import plots
from pipeline.bench.report import (
    GATE_PLOT,
    JSON_NAME,
    MARKDOWN_NAME,
    MEMORY_PLOT,
    PARETO_PLOT,
    THROUGHPUT_PLOT,
    render_markdown,
)
from pipeline.bench.results import BenchReport
from pipeline.core.atomic import write_text_atomic


def write_bench_report(report: BenchReport, out_dir: Path) -> dict[str, Path]:
    """Every file of the report, each written atomically; returns them by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / JSON_NAME,
        "markdown": out_dir / MARKDOWN_NAME,
        "pareto_plot": out_dir / PARETO_PLOT,
        "throughput_plot": out_dir / THROUGHPUT_PLOT,
        "memory_plot": out_dir / MEMORY_PLOT,
        "gate_plot": out_dir / GATE_PLOT,
    }
    write_text_atomic(paths["json"], report.model_dump_json(indent=2) + "\n")
    write_text_atomic(paths["markdown"], render_markdown(report))
    plots.plot_pareto(report, paths["pareto_plot"])
    plots.plot_throughput(report, paths["throughput_plot"])
    plots.plot_memory(report, paths["memory_plot"])
    plots.plot_gate(report, paths["gate_plot"])
    return paths
