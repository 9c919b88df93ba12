"""Write a BenchReport as its files: bench.json (versioned), bench.md and the PNG plots."""

from __future__ import annotations

import json
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
from pipeline.bench.results import BENCH_REPORT_VERSION, BenchReport
from pipeline.core.atomic import write_text_atomic
from pipeline.core.reporter import Reporter


def read_previous(out_dir: Path, reporter: Reporter) -> BenchReport | None:
    """The report an earlier bench left in out_dir, to set this one beside (pipeline.bench.drift);
    None, said in one line, when there is none this version can read."""
    path = out_dir / JSON_NAME
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        version = raw.get("report_version") if isinstance(raw, dict) else None
        if version != BENCH_REPORT_VERSION:
            reporter.warn(
                f"{path}: report_version {version}, this bench writes {BENCH_REPORT_VERSION}: "
                "its figures are not compared with this run's"
            )
            return None
        return BenchReport.model_validate(raw)
    except (OSError, ValueError) as exc:
        reporter.warn(f"{path}: unreadable ({str(exc).splitlines()[0]}): its figures are not compared")
        return None


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
