"""Write a BenchReport as bench.json (versioned), bench.md and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from pipeline.bench.machine import MachineSnapshot
from pipeline.bench.results import BenchReport, VariantResult
from pipeline.bench.stats import NOISY_RELATIVE_SPREAD, Percentiles, Spread
from pipeline.core.atomic import write_bytes_atomic, write_text_atomic

JSON_NAME = "bench.json"
MARKDOWN_NAME = "bench.md"
THROUGHPUT_PLOT = "throughput.png"
LATENCY_PLOT = "latency.png"
FORMATS_PLOT = "formats.png"


def write_bench_report(report: BenchReport, out_dir: Path) -> dict[str, Path]:
    """Every file of the report, each written atomically; returns them by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / JSON_NAME,
        "markdown": out_dir / MARKDOWN_NAME,
        "throughput_plot": out_dir / THROUGHPUT_PLOT,
        "latency_plot": out_dir / LATENCY_PLOT,
        "formats_plot": out_dir / FORMATS_PLOT,
    }
    write_text_atomic(paths["json"], report.model_dump_json(indent=2) + "\n")
    write_text_atomic(paths["markdown"], render_markdown(report))
    plot_throughput(report, paths["throughput_plot"])
    plot_latency(report, paths["latency_plot"])
    plot_formats(report, paths["formats_plot"])
    return paths


def variant_label(v: VariantResult) -> str:
    return f"{v.precision}/{v.profile}"


def _pct(p: Percentiles | None) -> str:
    return "n/a" if p is None else f"{p.p50_ms:.2f} / {p.p90_ms:.2f} / {p.p99_ms:.2f}"


def spread_text(s: Spread, digits: int = 1) -> str:
    """The median, then the lowest-highest run, and a visible mark when the runs spread too wide."""
    if s.runs == 1:
        return f"{s.median:.{digits}f} (1 run)"
    mark = ", noisy" if s.noisy else ""
    return f"{s.median:.{digits}f} ({s.low:.{digits}f}-{s.high:.{digits}f}{mark})"


NOISY_NOTE = (
    f"Each figure is the median of its runs with the lowest and highest run in brackets; *noisy* marks "
    f"one whose runs span more than {NOISY_RELATIVE_SPREAD:.0%} of the median "
    "(`pipeline/bench/stats.py`, NOISY_RELATIVE_SPREAD): a difference smaller than that between two "
    "variants may be the machine, not the engines."
)
SPEED_NOTE = (
    "Two speeds, never mixed: *decode tokens/s* is batch 1 streamed, the tokens after the first over "
    "their span (no prefill); *output tokens/s* is every output token of a batch over the whole "
    "generate call (prefill included), so at batch 1 it is the lower of the two."
)


def ratio_text(value: float | None) -> str:
    if value is None:
        return "n/a"
    # Far below a ceiling (the CPU target's Python loop against its bandwidth) still shows a figure.
    return f"{value:.2f}x" if value >= 0.01 else f"{value:.1e}x"


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


@dataclass(frozen=True)
class Best:
    """The highest output tokens/s of an engine's batches (or served client counts)."""

    rate: Spread
    at: str


def best_point(v: VariantResult) -> Best | None:
    """Output tokens/s only: batch 1's decode speed times no prefill and is not a candidate."""
    points = [Best(p.output_tokens_per_s, f"batch {p.batch_size}") for p in v.throughput]
    points += [Best(Spread.of([p.output_tokens_per_s]), f"{p.concurrency} clients") for p in v.served]
    return max(points, key=lambda b: b.rate.median, default=None)


def best_text(v: VariantResult) -> str:
    best = best_point(v)
    return "n/a" if best is None else f"{spread_text(best.rate)} at {best.at}"


def _snapshot_text(s: MachineSnapshot) -> str:
    parts = ["load " + ("n/a" if s.load_1_5_15 is None else " / ".join(f"{x:.2f}" for x in s.load_1_5_15))]
    if s.cpu_mhz is not None:
        parts.append(f"CPU {s.cpu_mhz:.0f} MHz")
    parts += [
        f"GPU {g.index} ({g.name}) SM {g.sm_mhz}"
        + (f"/{g.sm_max_mhz}" if g.sm_max_mhz else "")
        + f" MHz, memory {g.memory_mhz} MHz"
        for g in s.gpu_clocks
    ]
    return ", ".join(parts)


def machine_lines(report: BenchReport) -> list[str]:
    m = report.machine
    lines = [
        f"Machine: {m.cpu_count} CPUs" + (f" ({m.cpu_model})" if m.cpu_model else "") + ".",
        f"Before: {_snapshot_text(m.before)}. After: {_snapshot_text(m.after)} (load: 1 / 5 / 15 min).",
    ]
    if m.busy_before:
        lines.append(
            f"**Busy machine**: the 1-minute load before the bench ({m.before.load_1_5_15[0]:.2f}) was at "
            f"least the CPU count ({m.cpu_count}); the engines shared the cores with other work."
        )
    return lines


def _utilization(v: VariantResult) -> str:
    u = v.memory.gpu_utilization if v.memory else None
    return "n/a" if u is None else f"{u.mean_percent:.0f}% mean, {u.max_percent}% max"


def gate_verdict(v: VariantResult) -> str:
    return "not run" if v.gate is None else ("pass" if v.gate.verdict else "FAIL")


def _check_names(report: BenchReport) -> list[str]:
    """Every gate check any engine reports, in first-seen order: new formats' checks need no edit here."""
    return list(dict.fromkeys(c.name for v in report.variants if v.gate for c in v.gate.checks))


def _check_cell(v: VariantResult, name: str) -> str:
    check = next((c for c in v.gate.checks if c.name == name), None) if v.gate else None
    if check is None:
        return "n/a"
    return f"{check.value:.4g} ({check.rule}) {'pass' if check.passed else 'FAIL'}"


def formats_table(report: BenchReport) -> list[str]:
    """One row per engine: measured speed and memory beside the plan's figures, then the gate's."""
    checks = _check_names(report)
    header = [
        "engine",
        "decode tokens/s (batch 1)",
        "plan ceiling",
        "measured / ceiling",
        "best output tokens/s",
        "peak memory",
        "plan memory",
        "peak / plan",
        "KV bytes/token (plan)",
        "largest batch (plan)",
        *checks,
        "gate",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for v in report.variants:
        cells = [
            variant_label(v),
            spread_text(v.latency.decode_tokens_per_s),
            f"{v.plan.decode_ceiling_tokens_per_s:.1f}",
            ratio_text(v.ratios.decode_vs_ceiling),
            best_text(v),
            _gib(v.memory.peak_bytes) if v.memory else "n/a",
            _gib(v.plan.memory_estimate_bytes),
            ratio_text(v.ratios.peak_memory_vs_estimate),
            f"{v.plan.kv_bytes_per_token:,}",
            str(v.plan.largest_batch_at_max_seq_len),
            *(_check_cell(v, name) for name in checks),
            gate_verdict(v),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def figure_sources(report: BenchReport) -> dict[str, list[str]]:
    """Where each kind of figure comes from (distinct texts), as bench.json's `source` fields say."""
    kinds: dict[str, list[str]] = {}

    def add(kind: str, source: str) -> None:
        if source not in kinds.setdefault(kind, []):
            kinds[kind].append(source)

    for v in report.variants:
        add("latency (TTFT, inter-token, decode tokens/s at batch 1)", v.latency.source)
        for p in v.throughput:
            add("throughput (in process)", p.source)
        for p in v.served:
            add("served", p.source)
        if v.memory is not None:
            add("peak memory", v.memory.source)
            if v.memory.gpu_utilization is not None:
                add("GPU utilization", v.memory.gpu_utilization.source)
        add("plan figures", v.plan.source)
        if v.gate is not None:
            add("gate figures", v.gate.source)
    return kinds


def render_markdown(report: BenchReport) -> str:
    pub = report.published
    lines = [
        f"# Benchmark: {report.model} on {report.target}",
        "",
        f"Runtime: {report.runtime}. Created {report.created_at.isoformat(timespec='seconds')} on "
        + ", ".join(f"{k} {v}" for k, v in report.host.items())
        + ".",
        f"Requested shape: {report.settings.input_len} input tokens, {report.settings.output_len} output "
        f"tokens, {report.settings.latency_runs} latency runs and {report.settings.throughput_runs} runs per "
        f"batch size after {report.settings.warmup_runs} warm-up run(s), synthetic prompts "
        f"(seed {report.settings.seed}), no early stop.",
        "",
        *machine_lines(report),
        "",
        NOISY_NOTE,
        "",
        SPEED_NOTE,
        "",
        "## Latency (batch 1)",
        "",
        "| engine | runs | TTFT ms | inter-token p50 / p90 / p99 (ms) | decode tokens/s "
        "| plan ceiling tokens/s | measured / ceiling |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in report.variants:
        lines.append(
            f"| {variant_label(v)} | {v.latency.runs} | {spread_text(v.latency.ttft_ms, 2)} | {_pct(v.latency.itl)} "
            f"| {spread_text(v.latency.decode_tokens_per_s)} | {v.plan.decode_ceiling_tokens_per_s:.1f} "
            f"| {ratio_text(v.ratios.decode_vs_ceiling)} |"
        )
    lines += [
        "",
        "## Throughput (static batches, in process, not streamed)",
        "",
    ]
    if any(v.throughput for v in report.variants):
        lines += [
            "| engine | batch | runs | output tokens/s | wall (s, median) | bandwidth ceiling tokens/s "
            "| measured / ceiling |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {variant_label(v)} | {p.batch_size} | {p.runs} | {spread_text(p.output_tokens_per_s)} | {p.wall_s:.3f} "
            f"| {c.ceiling_tokens_per_s:.1f} | {ratio_text(c.measured_vs_ceiling)} |"
            for v in report.variants
            for p, c in zip(v.throughput, v.ratios.throughput_vs_ceiling, strict=True)
        ]
        lines += [
            "",
            "The bandwidth ceiling of a batch reads the weights once per step and each request's KV cache "
            "at the run's mean context (prompt + half the output); it ignores compute, so large batches "
            "sit further below it.",
        ]
    else:
        lines.append("Not measured: the engine ran in the server (served mode).")
    served = [(v, p) for v in report.variants for p in v.served]
    lines += ["", "## Served (concurrent requests, in-flight batching)", ""]
    if served:
        lines += [
            "| engine | clients | requests | output tokens/s | TTFT p50 / p90 / p99 (ms) | inter-token p50 / p90 / p99 (ms) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {variant_label(v)} | {p.concurrency} | {p.requests} | {p.output_tokens_per_s:.1f} "
            f"| {_pct(p.ttft)} | {_pct(p.itl)} |"
            for v, p in served
        ]
    else:
        lines.append("Not measured: no server URL was given (`trtllm-pipeline bench --server-url URL`).")
    lines += [
        "",
        "## Peak memory",
        "",
        "| engine | measure | peak | plan estimate | peak / estimate | GPU utilization |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for v in report.variants:
        measure, peak = (
            (v.memory.measure, _gib(v.memory.peak_bytes)) if v.memory else ("not observable", "n/a")
        )
        lines.append(
            f"| {variant_label(v)} | {measure} | {peak} | {_gib(v.plan.memory_estimate_bytes)} "
            f"| {ratio_text(v.ratios.peak_memory_vs_estimate)} | {_utilization(v)} |"
        )
    if any(v.memory is None for v in report.variants):
        lines += ["", "- not observable: the engine ran in a CPU server process this client cannot measure"]
    lines += [
        "",
        "## Formats side by side",
        "",
        "Each engine's measured speed and peak memory beside its plan's figures, and its gate's checks.",
        "",
        *formats_table(report),
        "",
        f"![formats]({FORMATS_PLOT})",
    ]
    lines += [
        "",
        "## Reference: a published estimate",
        "",
        f"{pub.model} {pub.precision} on {pub.target}: about {pub.decode_tokens_per_s:.0f} tokens/s at batch 1, "
        f"batch {pub.max_batch_size} fits, about {pub.weights_gb:.0f} GB of weights ({pub.source}).",
        "",
    ]
    if pub.applies:
        lines += [
            "| engine | decode tokens/s | published | measured / published |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {variant_label(v)} | {spread_text(v.latency.decode_tokens_per_s)} | {pub.decode_tokens_per_s:.0f} "
            f"| {ratio_text(v.ratios.decode_vs_published)} |"
            for v in report.variants
        ]
    else:
        lines.append(
            f"It applies only to {pub.model} {pub.precision} on {pub.target}; this report measures "
            f"{report.model} on {report.target}, so no ratio is taken against it."
        )
    adjusted = [(v, a) for v in report.variants for a in v.adjustments]
    if adjusted:
        lines += ["", "## Shape adjusted to the profiles", ""]
        lines += [f"- {variant_label(v)}: {a}" for v, a in adjusted]
    lines += ["", "## Where each figure comes from", ""]
    for kind, sources in figure_sources(report).items():
        lines += [f"- {kind}: {source}" for source in sources]
    lines += ["", f"![throughput]({THROUGHPUT_PLOT})", "", f"![latency]({LATENCY_PLOT})", ""]
    return "\n".join(lines)


def _figure(width: float, height: float, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> None:
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=110)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, png.getvalue())


def plot_throughput(report: BenchReport, path: Path) -> None:
    """Output tokens/s against batch size per engine, the plan's ceilings dotted; served points dashed."""
    plt, fig, (ax,) = _figure(7, 4.5)
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
    plt, fig, axes = _figure(10, 4.5, ncols=2)
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
    checks = _check_names(report)
    plt, fig, axes = _figure(4.2 * (2 + len(checks)), 4.5, ncols=2 + len(checks))
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
