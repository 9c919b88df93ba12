"""The bench report's PNG plots (matplotlib, Agg): one figure per question, read at 1000 px wide."""

from __future__ import annotations

import io
from pathlib import Path

from pipeline.bench.report import budget_text, check_names, variant_label
from pipeline.bench.results import BenchReport
from pipeline.bench.stats import Spread
from pipeline.bench.sweetspot import operating_points, peer_label, peer_points, recommend
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
    points_of |= {peer_label(peer): peer_points(peer) for peer in report.peers}
    for ax, name, pick, budget in panels:
        xs_all: list[float] = []
        ys_all: list[float] = []
        for index, (label, points) in enumerate(points_of.items()):
            if not points:
                continue
            color = f"C{index % 10}"
            typical = [pick(p)[0] for p in points]
            held = [pick(p)[1] for p in points]
            rates = [p.tokens_per_s.median for p in points]
            xs_all += typical + held
            ys_all += rates
            # In-process batches and served client counts are two curves: different loads, different tools.
            for kind, style in (("batch", "-"), ("clients", "--")):
                curve = [(x, y) for p, x, y in zip(points, held, rates, strict=True) if p.load_kind == kind]
                if curve:
                    shown = label if kind == "batch" or label.startswith("peer") else f"{label} served"
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
        _log_if_wide(ax, "y", ys_all)  # a peer or a served curve far above in-process batches
        ax.set_xlabel(name)
        ax.set_ylabel("output tokens/s")
        ax.set_title(f"throughput against {name.rsplit(' ', 1)[0]}")
        ax.grid(True, which="major", alpha=0.3)
    _legend_below(
        fig,
        axes[0],
        title=(
            f"b: batch (in-process harness), c: clients (served, aiperf); filled: within {budget_text(r)} "
            "(dashed lines)\n"
            "point: p99 (served) or slowest run (in process); shade: back to p50 or the median run"
        ),
        most_columns=4,
    )
    fig.suptitle(f"{report.model} on {report.target}: latency against throughput")
    _save(plt, fig, path)


def _legend_below(fig, ax, *, title: str | None = None, most_columns: int = 3) -> None:
    """The legend under the axes, outside the data, in as many columns as fit the figure's width
    (long backend/precision/profile names, served and peer entries need fewer)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    fig.canvas.draw()  # the constrained layout needs a renderer before a legend can be measured
    for ncols in range(max(1, min(len(labels), most_columns)), 0, -1):
        legend = fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=ncols,
            title=title,
            fontsize="small",
            title_fontsize="small",
        )
        if ncols == 1 or legend.get_window_extent().width <= fig.bbox.width:
            break
        legend.remove()
    # Taller by the legend's rows, so that the axes above keep their height.
    fig.set_figheight(fig.get_figheight() + legend.get_window_extent().height / fig.dpi)


def ceiling_lines(report: BenchReport) -> dict[str, list[tuple[int, float]]]:
    """Per engine, the plan's bandwidth ceiling at each batch size measured; none where the plan does
    not describe what ran (a GPU model beside a CPU run would flatten the data and mean nothing)."""
    if not report.plan_applies:
        return {}
    return {
        variant_label(v): [(r.batch_size, r.ceiling_tokens_per_s) for r in v.ratios.throughput_vs_ceiling]
        for v in report.variants
        if v.ratios.throughput_vs_ceiling
    }


def plan_memory_bars(report: BenchReport) -> list[float] | None:
    """The plan's memory estimate per engine (GiB), or None where the plan does not apply."""
    if not report.plan_applies:
        return None
    return [v.plan.memory_estimate_bytes / 2**30 for v in report.variants]


def _spread_line(ax, points: list[tuple[int, Spread]], **style) -> list[float]:
    """Medians joined, each run's range as a bar; the values drawn, for the axis scale."""
    if not points:
        return []
    xs, rates = zip(*points, strict=True)
    ax.errorbar(
        xs,
        [r.median for r in rates],
        yerr=[[r.median - r.low for r in rates], [r.high - r.median for r in rates]],
        capsize=3,
        **style,
    )
    return [r.low for r in rates] + [r.high for r in rates]


def plot_throughput(report: BenchReport, path: Path) -> None:
    """Speed against the ceiling: output tokens/s (median, min-max bars) against batch size per engine;
    the plan's bandwidth ceilings dotted only where the plan describes what ran (plan_applies)."""
    plt, fig, (ax,) = _figure(5.0, constrained=True)
    ys: list[float] = []
    ceilings_of = ceiling_lines(report)
    for index, v in enumerate(report.variants):
        color = f"C{index % 10}"
        batches = [(p.batch_size, p.output_tokens_per_s) for p in v.throughput]
        ys += _spread_line(ax, batches, color=color, marker="o", linestyle="-", label=variant_label(v))
        served = [(p.concurrency, p.output_tokens_per_s) for p in v.served]
        ys += _spread_line(
            ax,
            served,
            color=color,
            marker="s",
            linestyle="--",
            label=f"{variant_label(v)} served, aiperf (x: clients)",
        )
        if variant_label(v) in ceilings_of:
            batches, ceilings = zip(*ceilings_of[variant_label(v)], strict=True)
            ax.plot(
                batches,
                ceilings,
                linestyle=":",
                color=color,
                label=f"{variant_label(v)}: plan's bandwidth ceiling",
            )
            ys += list(ceilings)
    for index, peer in enumerate(report.peers, start=len(report.variants)):
        ys += _spread_line(
            ax,
            [(p.concurrency, p.output_tokens_per_s) for p in peer.served],
            color=f"C{index % 10}",
            marker="^",
            linestyle="--",
            label=f"{peer_label(peer)} (x: clients)",
        )
    loads = sorted(
        {p.batch_size for v in report.variants for p in v.throughput}
        | {p.concurrency for v in report.variants for p in v.served}
        | {p.concurrency for peer in report.peers for p in peer.served}
    )
    if loads and loads[-1] / loads[0] > 4:
        ax.set_xscale("log", base=2)  # batch sizes double: equal steps on a base-2 axis
        ax.minorticks_off()
    # Ticks at the measured sizes, written as the numbers they are.
    ax.set_xticks(loads, [str(x) for x in loads])
    _log_if_wide(ax, "y", ys)
    ax.set_xlabel("batch size (served: concurrent clients)")
    ax.set_ylabel("output tokens/s")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(f"{report.model} on {report.target}: output tokens/s by batch size")
    note = None if report.plan_applies else "no ceiling: the plan models the target GPU, not what ran here"
    _legend_below(fig, ax, title=note)
    _save(plt, fig, path)


def plot_memory(report: BenchReport, path: Path) -> None:
    """Memory against the plan: each engine's peak, beside the plan's estimate where the plan applies."""
    plt, fig, (ax,) = _figure(4.5, constrained=True)
    labels = [variant_label(v) for v in report.variants]
    xs = list(range(len(labels)))
    measured = [v.memory for v in report.variants]
    planned = plan_memory_bars(report)
    width = 0.6 if planned is None else 0.4
    offset = 0.0 if planned is None else -width / 2
    measures = sorted({m.measure for m in measured if m is not None})
    ax.bar(
        [x + offset for x in xs],
        [m.peak_bytes / 2**30 if m else 0 for m in measured],
        width,
        label=f"measured peak ({', '.join(measures) or 'not observable'})",
    )
    if planned is not None:
        ax.bar(
            [x + width / 2 for x in xs],
            planned,
            width,
            label="plan estimate (weights + allowance + KV budget)",
        )
    for x, m in zip(xs, measured, strict=True):
        if m is None:
            ax.annotate("not observable", (x + offset, 0), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize="small")  # long names stay apart
    ax.set_ylabel("GiB")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"{report.model} on {report.target}: peak memory per engine")
    note = (
        None
        if report.plan_applies
        else "no plan estimate: it models the target GPU's memory, not this process"
    )
    _legend_below(fig, ax, title=note)
    _save(plt, fig, path)


def plot_gate(report: BenchReport, path: Path) -> None:
    """Gate results: one panel per check, each engine's value against its own threshold."""
    checks = check_names(report)
    cols = max(1, min(len(checks), 3))  # three panels a row keep each readable at 1000 px
    rows = max(1, -(-len(checks) // cols))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(
        rows, cols, figsize=(WIDTH_IN, 3.2 * rows + 0.8), squeeze=False, layout="constrained"
    )
    labels = [variant_label(v) for v in report.variants]
    xs = list(range(len(labels)))
    axes = [ax for row in grid for ax in row]
    for ax, name in zip(axes, checks, strict=False):
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
            s=500,
            color="black",
            zorder=3,
            label="threshold",
        )
        for x, c, v in zip(xs, found, report.variants, strict=True):
            if c is None:
                # No gate ran for the engine, or its format's gate has no such check.
                why = "not run" if v.gate is None else "no such check"
                ax.annotate(why, (x, 0), ha="center", va="bottom", fontsize=8)
        ax.set_title(name, fontsize="medium")
        ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
    for ax in axes[len(checks) :]:
        ax.set_visible(False)
    if not checks:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no gate has run for these engines", ha="center", va="center")
        axes[0].set_axis_off()
    fig.suptitle(
        f"{report.model} on {report.target}: gate checks (green: pass, red: fail, black line: threshold)"
    )
    _save(plt, fig, path)
