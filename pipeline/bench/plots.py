"""The bench report's PNG plots (matplotlib, Agg): one figure per question, read at 1000 px wide."""

from __future__ import annotations

import io
from pathlib import Path

from pipeline.bench.report import best_point, budget_text, check_names, variant_label
from pipeline.bench.results import BenchReport
from pipeline.bench.sweetspot import operating_points, recommend
from pipeline.core.atomic import write_bytes_atomic

# 10 inches at 100 dpi: every plot is 1000 px wide, the width a report is read at.
WIDTH_IN = 10.0
DPI = 100


def _figure(height: float, ncols: int = 1, *, width: float = WIDTH_IN, constrained: bool = False):
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    layout = "constrained" if constrained else None  # "outside" legends need the constrained layout
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False, layout=layout)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> None:
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, png.getvalue())


def _log_if_wide(ax, axis: str, values: list[float]) -> None:
    """A log scale where the values span more than a decade, its ticks in plain numbers (not 10^2)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    positive = [x for x in values if x > 0]
    if not positive or max(positive) / min(positive) <= 10:
        return
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.4g}"))
    target.set_minor_formatter(FuncFormatter(lambda _value, _pos: ""))


def plot_pareto(report: BenchReport, path: Path) -> None:
    """Output tokens/s against inter-token time and against TTFT, one line per variant through its
    batch sizes (or client counts); filled markers meet the latency budget, the budget is dashed."""
    r = recommend(report)
    plt, fig, axes = _figure(4.8, ncols=2, constrained=True)
    panels = (
        (axes[0], "inter-token ms", lambda p: (p.itl_p50_ms, p.itl_ms), r.itl_budget_ms),
        (axes[1], "time to first token ms", lambda p: (p.ttft_p50_ms, p.ttft_ms), r.ttft_budget_ms),
    )
    points_of = {variant_label(v): operating_points(v) for v in report.variants}
    for ax, name, pick, budget in panels:
        xs_all: list[float] = []
        for index, (label, points) in enumerate(points_of.items()):
            if not points:
                continue
            color = f"C{index % 10}"
            typical = [pick(p)[0] for p in points]
            held = [pick(p)[1] for p in points]
            rates = [p.tokens_per_s.median for p in points]
            xs_all += typical + held
            # In-process batches and served client counts are two curves: different loads, different tools.
            for kind, style in (("batch", "-"), ("clients", "--")):
                curve = [(x, y) for p, x, y in zip(points, held, rates, strict=True) if p.load_kind == kind]
                if curve:
                    shown = label if kind == "batch" else f"{label} served"
                    ax.plot(*zip(*curve, strict=True), style, color=color, label=shown, linewidth=1.5)
            # From the typical (p50 / median run) to the figure held to the budget (p99 / slowest run).
            ax.hlines(rates, typical, held, color=color, linewidth=4, alpha=0.3)
            for p, x, y in zip(points, held, rates, strict=True):
                inside = p.within(r.itl_budget_ms, r.ttft_budget_ms)
                ax.plot(x, y, "o", color=color, markerfacecolor=color if inside else "white", markersize=7)
                ax.annotate(
                    f"{'b' if p.load_kind == 'batch' else 'c'}{p.load}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(5, 4),
                    fontsize=8,
                )
        ax.axvline(budget, color="black", linestyle="--", linewidth=1)
        xs_all.append(budget)
        _log_if_wide(ax, "x", xs_all)
        ax.set_xlabel(name)
        ax.set_ylabel("output tokens/s")
        ax.set_title(f"throughput against {name.rsplit(' ', 1)[0]}")
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=max(1, min(len(labels), 4)),
        title=(
            f"b: batch (in process), c: clients (served); filled: within {budget_text(r)} (dashed lines)\n"
            "point: p99 (served) or slowest run (in process); shade: back to p50 or the median run"
        ),
        fontsize="small",
        title_fontsize="small",
    )
    fig.suptitle(f"{report.model} on {report.target}: latency against throughput")
    _save(plt, fig, path)


def plot_throughput(report: BenchReport, path: Path) -> None:
    """Output tokens/s against batch size per engine, the plan's ceilings dotted; served points dashed."""
    plt, fig, (ax,) = _figure(4.5)
    for v in report.variants:
        color = None
        if v.throughput:
            rates = [p.output_tokens_per_s for p in v.throughput]
            bars = ax.errorbar(
                [p.batch_size for p in v.throughput],
                [r.median for r in rates],
                yerr=[[r.median - r.low for r in rates], [r.high - r.median for r in rates]],
                marker="o",
                capsize=3,
                label=variant_label(v),
            )
            color = bars.lines[0].get_color()
        if v.served:
            (line,) = ax.plot(
                [p.concurrency for p in v.served],
                [p.output_tokens_per_s for p in v.served],
                marker="s",
                linestyle="--",
                color=color,
                label=f"{variant_label(v)} served (x = clients)",
            )
            color = line.get_color()
        ax.scatter([1], [v.plan.decode_ceiling_tokens_per_s], marker="x", color=color, zorder=3)
        if v.ratios.throughput_vs_ceiling:
            ax.plot(
                [r.batch_size for r in v.ratios.throughput_vs_ceiling],
                [r.ceiling_tokens_per_s for r in v.ratios.throughput_vs_ceiling],
                linestyle=":",
                color=color,
            )
    ax.set_xscale("log", base=2)
    if _spans_decades(report):
        ax.set_yscale("log")  # a ceiling far above the measurements would flatten them on a linear axis
    ax.set_xlabel("batch size (served: concurrent clients)")
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"{report.model} on {report.target}: throughput (dotted, x: the plan's bandwidth ceilings)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    _save(plt, fig, path)


def _spans_decades(report: BenchReport) -> bool:
    values = [p.output_tokens_per_s.median for v in report.variants for p in v.throughput]
    values += [p.output_tokens_per_s for v in report.variants for p in v.served]
    values += [v.plan.decode_ceiling_tokens_per_s for v in report.variants]
    return min(values) > 0 and max(values) / min(values) > 100


def plot_latency(report: BenchReport, path: Path) -> None:
    """Batch-1 TTFT and inter-token latency percentiles, grouped per engine."""
    plt, fig, axes = _figure(4.5, ncols=2)
    labels = [variant_label(v) for v in report.variants]
    width = 0.25
    ttft = [v.latency.ttft_ms for v in report.variants]
    axes[0].bar(
        range(len(labels)),
        [s.median for s in ttft],
        0.5,
        yerr=[[s.median - s.low for s in ttft], [s.high - s.median for s in ttft]],
        capsize=4,
        label="median (bars: min-max of runs)",
    )
    for i, (name, field) in enumerate((("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"))):
        xs = [j + (i - 1) * width for j in range(len(labels))]
        axes[1].bar(xs, [getattr(v.latency.itl, field) for v in report.variants], width, label=name)
    for ax, title in ((axes[0], "time to first token"), (axes[1], "inter-token latency")):
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_ylabel("ms")
        ax.set_title(f"{title} (batch 1)")
        ax.legend(fontsize="small")
    fig.suptitle(f"{report.model} on {report.target}: latency percentiles")
    fig.tight_layout()
    _save(plt, fig, path)


def plot_formats(report: BenchReport, path: Path) -> None:
    """Per engine: tokens/s against the plan's ceiling, peak memory against the plan's, each gate check."""
    checks = check_names(report)
    plt, fig, axes = _figure(4.5, ncols=2 + len(checks), width=4.2 * (2 + len(checks)))
    labels = [variant_label(v) for v in report.variants]
    xs = range(len(labels))
    speed, memory = axes[0], axes[1]
    width = 0.4
    speed.bar(
        [x - width / 2 for x in xs],
        [v.latency.decode_tokens_per_s.median for v in report.variants],
        width,
        label="decode tokens/s (batch 1)",
    )
    speed.bar(
        [x + width / 2 for x in xs],
        [b.rate.median if (b := best_point(v)) else 0 for v in report.variants],
        width,
        label="best output tokens/s",
    )
    speed.scatter(
        xs,
        [v.plan.decode_ceiling_tokens_per_s for v in report.variants],
        marker="x",
        color="black",
        zorder=3,
        label="plan ceiling (batch 1)",
    )
    if _spans_decades(report):
        speed.set_yscale("log")
    speed.set_title("output tokens/s")
    memory.bar(
        [x - width / 2 for x in xs],
        [(v.memory.peak_bytes if v.memory else 0) / 2**30 for v in report.variants],
        width,
        label=f"peak ({report.variants[0].memory.measure if report.variants[0].memory else 'n/a'})",
    )
    memory.bar(
        [x + width / 2 for x in xs],
        [v.plan.memory_estimate_bytes / 2**30 for v in report.variants],
        width,
        label="plan estimate",
    )
    memory.set_title("memory (GiB)")
    for ax, name in zip(axes[2:], checks, strict=True):
        found = [
            next((c for c in v.gate.checks if c.name == name), None) if v.gate else None
            for v in report.variants
        ]
        ax.bar(
            xs,
            [c.value if c else 0 for c in found],
            0.6,
            color=["tab:green" if c and c.passed else "tab:red" for c in found],
        )
        # Thresholds are per format: each bar gets its own.
        ax.scatter(
            [x for x, c in zip(xs, found, strict=True) if c],
            [c.threshold for c in found if c],
            marker="_",
            s=400,
            color="black",
            zorder=3,
            label="threshold",
        )
        ax.set_title(f"gate: {name}")
    for ax in axes:
        ax.set_xticks(list(xs), labels, rotation=20, ha="right")
        ax.grid(True, axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(f"{report.model} on {report.target}: formats side by side")
    fig.tight_layout()
    _save(plt, fig, path)
