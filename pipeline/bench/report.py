"""bench.md from a BenchReport, and the text of its figures that the terminal summary shares."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.bench.machine import MachineSnapshot
from pipeline.bench.results import BenchReport, VariantResult
from pipeline.bench.stats import NOISY_RELATIVE_SPREAD, Percentiles, RunPercentiles, Spread
from pipeline.bench.sweetspot import OperatingPoint, Recommendation, peer_label, recommend

JSON_NAME = "bench.json"
MARKDOWN_NAME = "bench.md"
PARETO_PLOT = "pareto.png"
THROUGHPUT_PLOT = "throughput.png"
MEMORY_PLOT = "memory.png"
GATE_PLOT = "gate.png"


def variant_label(v: VariantResult) -> str:
    return v.label


def _pct(p: Percentiles | None) -> str:
    return "n/a" if p is None else f"{p.p50_ms:.2f} / {p.p90_ms:.2f} / {p.p99_ms:.2f}"


def _run_pct(p: RunPercentiles | None, which: str) -> str:
    return "n/a" if p is None else spread_text(getattr(p, which), 2)


def spread_text(s: Spread, digits: int = 1) -> str:
    """The median, then the lowest-highest run, and a visible mark when the runs spread too wide or the
    previous bench's lay apart from them (with that bench's median)."""
    if s.runs == 1 and s.apart_from is None:
        return f"{s.median:.{digits}f} (1 run)"
    mark = ", noisy" if s.noisy else ""
    if s.apart_from is not None:
        mark += f", was {s.apart_from.median:.{digits}f}"
    return f"{s.median:.{digits}f} ({s.low:.{digits}f}-{s.high:.{digits}f}{mark})"


NOISY_NOTE = (
    f"Each figure is the median of its runs with the lowest and highest run in brackets; *noisy* marks "
    f"one whose runs span more than {NOISY_RELATIVE_SPREAD:.0%} of the median "
    "(`pipeline/bench/stats.py`, NOISY_RELATIVE_SPREAD), or whose runs lie apart from the same "
    "figure's in the previous bench of this folder (same engine bytes, shape and host; *was* gives "
    "that bench's median): a difference smaller than that between two variants may be the machine, "
    "not the engines."
)


def previous_text(report: BenchReport) -> str:
    """How this bench compares with the one it replaced in its folder."""
    p = report.previous
    if p is None:
        return "No earlier bench report in this folder: nothing to check these figures against."
    when = p.created_at.isoformat(timespec="seconds")
    if p.not_compared is not None:
        return f"The previous bench in this folder ({when}) is not compared: {p.not_compared}."
    text = (
        f"Against the previous bench in this folder ({when}): {p.figures_apart} of {p.figures_compared} "
        "figures of the same engines and shapes lie apart from it"
    )
    if p.figures_apart:
        text += (
            f", by up to {p.largest_shift:.0%} (median to median), and are marked noisy: with the same "
            "engine bytes the machine moved between the two benches, so a lead smaller than that may be "
            "the machine's"
        )
    return text + "."


SPEED_NOTE = (
    "Two speeds, never mixed: *decode tokens/s* is batch 1 streamed, the tokens after the first over "
    "their span (no prefill); *output tokens/s* is every output token of a batch over the whole "
    "generate call (prefill included), so at batch 1 it should be the lower of the two."
)


def plan_cell(report: BenchReport, text: str) -> str:
    """A figure of the plan (a model of the target GPU), shown only where the engines ran on one."""
    return text if report.plan_applies else "n/a"


def plan_note(report: BenchReport) -> list[str]:
    if report.plan_applies:
        return []
    return [
        f"The plan's ceilings and memory estimates model {report.target}'s bandwidth and memory, not "
        f"what ran here ({report.runtime}): they are left out (n/a) rather than set beside figures they "
        "do not describe.",
        "",
    ]


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
    points += [Best(p.output_tokens_per_s, f"{p.concurrency} clients") for p in v.served]
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


# NVML's utilization is the share of each sample period in which a kernel ran. While an engine runs
# step after step, a kernel is running nearly all the time whatever the batch (a larger batch makes
# each kernel longer, not the GPU busier by this measure); a mean below this floor says the GPU waited
# on the host (Python, tokenization, scheduling between steps) for a tenth of the bench or more.
UTILIZATION_FLOOR_PERCENT = 90


def utilization_lines(report: BenchReport) -> list[str]:
    """Where GPU utilization fell below what back-to-back batches give; or why it is not measured."""
    readings = [
        (v, v.memory.gpu_utilization) for v in report.variants if v.memory and v.memory.gpu_utilization
    ]
    if not readings:
        return [
            f"GPU utilization is not measured: no NVML reading in this run ({report.runtime} on "
            f"{report.target}); it is read on GPU targets only.",
        ]
    lines = []
    for v, u in readings:
        largest = max((p.batch_size for p in v.throughput), default=1)
        if u.mean_percent < UTILIZATION_FLOOR_PERCENT:
            lines.append(
                f"- **{variant_label(v)}: GPU busy {u.mean_percent:.0f}% of the time (max {u.max_percent}%)** "
                f"over batches up to {largest}, below the {UTILIZATION_FLOOR_PERCENT}% that steps run back to "
                "back give: the GPU waited on the host; `bench --nsys` shows where."
            )
    if not lines:
        return [f"GPU utilization stayed at or above {UTILIZATION_FLOOR_PERCENT}% for every engine."]
    return lines


def gate_verdict(v: VariantResult) -> str:
    return "not run" if v.gate is None else ("pass" if v.gate.verdict else "FAIL")


def check_names(report: BenchReport) -> list[str]:
    """Every gate check any engine reports, in first-seen order: new formats' checks need no edit here."""
    return list(dict.fromkeys(c.name for v in report.variants if v.gate for c in v.gate.checks))


def _check_cell(v: VariantResult, name: str) -> str:
    check = next((c for c in v.gate.checks if c.name == name), None) if v.gate else None
    if check is None:
        return "n/a"
    return f"{check.value:.4g} ({check.rule}) {'pass' if check.passed else 'FAIL'}"


def formats_table(report: BenchReport) -> list[str]:
    """One row per engine: measured speed and memory beside the plan's figures, then the gate's."""
    checks = check_names(report)
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
            plan_cell(report, f"{v.plan.decode_ceiling_tokens_per_s:.1f}"),
            plan_cell(report, ratio_text(v.ratios.decode_vs_ceiling)),
            best_text(v),
            _gib(v.memory.peak_bytes) if v.memory else "n/a",
            plan_cell(report, _gib(v.plan.memory_estimate_bytes)),
            plan_cell(report, ratio_text(v.ratios.peak_memory_vs_estimate)),
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
    for peer in report.peers:
        for p in peer.served:
            add("served (peers)", p.source)
    for v in report.variants:
        if v.memory is not None:
            add("peak memory", v.memory.source)
            if v.memory.gpu_utilization is not None:
                add("GPU utilization", v.memory.gpu_utilization.source)
        add("plan figures", v.plan.source)
        if v.gate is not None:
            add("gate figures", v.gate.source)
    return kinds


def _point_figures(p: OperatingPoint) -> str:
    return (
        f"{spread_text(p.tokens_per_s)} output tokens/s; inter-token {p.itl_ms:.2f} ms, "
        f"TTFT {p.ttft_ms:.2f} ms ({p.held_to})"
    )


def budget_text(r: Recommendation) -> str:
    return f"inter-token <= {r.itl_budget_ms:g} ms and TTFT <= {r.ttft_budget_ms:g} ms"


def _caveat_lines(r: Recommendation) -> list[str]:
    """What the answer's figures cannot settle: rivals their runs overlap, a figure of its own that is noisy."""
    if r.best is None:
        return []
    lines = []
    if r.level_with:
        rivals = "; ".join(
            f"{p.variant} at {p.at}, {spread_text(p.tokens_per_s)} tokens/s" for p in r.level_with
        )
        lines.append(
            f"As fast for all these runs can tell (their runs overlap the answer's): {rivals}. Choose between "
            "them by memory, the gate or the long-context row, or rerun bench with more runs."
        )
    if r.best.tokens_per_s.noisy:
        lines.append(
            "The answer's own figure is marked noisy (see below): its runs spread wide or lie apart from "
            "the previous bench's, so its lead may be the machine's; rerun bench before deciding on it alone."
        )
    return [*lines, ""] if lines else []


def recommendation_lines(report: BenchReport) -> list[str]:
    """The table bench.md opens with: what to deploy for the budget, and for the longest context."""
    r = recommend(report)
    if r.best is not None:
        speed = [f"{r.best.variant} at {r.best.at}", _point_figures(r.best), r.best.measured_by]
    elif r.fastest_outside is not None:
        fastest = r.fastest_outside
        speed = [
            "none: no point meets the budget",
            f"the fastest, {fastest.variant} at {fastest.at}, needs: {_point_figures(fastest)}",
            fastest.measured_by,
        ]
    else:
        speed = ["none: nothing was measured at a batch or client count", "", ""]
    lc = r.long_context
    lines = [
        "## Recommendation",
        "",
        f"Latency budget: {budget_text(r)} (`--itl-budget-ms`, `--ttft-budget-ms`; defaults 50 and 500).",
        "",
        "| question | answer | figures | measured by |",
        "| --- | --- | --- | --- |",
        f"| most output tokens/s within the budget | {' | '.join(speed)} |",
        f"| most sequences at the long-context profile ({lc.profile}, max_seq_len {lc.max_seq_len}) "
        f"| {', '.join(lc.variants)} | {lc.sequences} sequences of {lc.max_seq_len} tokens fit"
        + ("" if report.plan_applies else f" (the plan's model of {report.target}, not of what ran here)")
        + " | the plan (`pipeline/planning/memory.py`: KV budget / KV bytes per sequence) |",
        "",
        *_caveat_lines(r),
        "Each variant's best operating point within the budget:",
        "",
        "| engine | at | output tokens/s | inter-token ms | TTFT ms | held to | measured by |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, p in (*r.per_variant, *r.per_peer):
        if p is None:
            lines.append(f"| {label} | none within the budget | | | | | |")
        else:
            lines.append(
                f"| {label} | {p.at} | {spread_text(p.tokens_per_s)} | {p.itl_ms:.2f} | {p.ttft_ms:.2f} "
                f"| {p.held_to} | {p.measured_by} |"
            )
    if r.per_peer:
        lines += [
            "",
            "Peers (`--compare`) ran the same aiperf workload beside the variants; the answer above is "
            "the published variant to deploy.",
        ]
    lines += [
        "",
        f"![latency against throughput]({PARETO_PLOT})",
        "",
        "*Which batch size or client count buys how many tokens/s for how much latency: each variant's "
        "operating points, the budget dashed; up and to the left is better.*",
        "",
    ]
    return lines


def served_lines(report: BenchReport) -> list[str]:
    """Every aiperf run: the variants' servers, then the peers, one row per client count."""
    rows = [(variant_label(v), p) for v in report.variants for p in v.served]
    rows += [(peer_label(peer), p) for peer in report.peers for p in peer.served]
    lines = ["## Served (concurrent streamed requests, in-flight batching)", ""]
    if not rows:
        return [
            *lines,
            "Not measured: `trtllm-pipeline bench --served` serves each published variant and measures it "
            "with aiperf (`--server-url URL`: a server you started; `--compare URL`: a peer).",
        ]
    lines += [
        "| endpoint | measured by | clients | runs | requests per run | requests/s | output tokens/s "
        "| TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | inter-token p99 ms |",
        "|" + " --- |" * 11,
    ]
    lines += [
        f"| {label} | {p.measured_by} | {p.concurrency} | {p.runs} | {p.requests} "
        f"| {spread_text(p.requests_per_s, 2)} | {spread_text(p.output_tokens_per_s)} "
        f"| {spread_text(p.ttft.p50_ms, 2)} | {spread_text(p.ttft.p99_ms, 2)} "
        f"| {_run_pct(p.itl, 'p50_ms')} | {_run_pct(p.itl, 'p99_ms')} |"
        for label, p in rows
    ]
    lines.append("")
    lines += [
        f"- {peer_label(peer)}: serves `{peer.model}`; it ran the workload of {peer.workload_of} (the same "
        "prompt file, output length and client counts)."
        for peer in report.peers
    ]
    lines += [
        "- Each row is one aiperf invocation of `runs` profile runs (`--num-profile-runs`, the warm-up "
        "before the first only); each figure is the median run's with the lowest and highest run, "
        "marked *noisy* as above. Every run's export lies beside this report "
        "(`aiperf/<backend>/<precision>/<profile>/c<clients>/` or `aiperf/peers/<n>/c<clients>/`, then "
        "`profile_runs/run_NNNN/profile_export_aiperf.json`); output tokens are counted with the model's "
        "tokenizer, and inter-token latency is aiperf's (request latency - TTFT) / (output tokens - 1).",
    ]
    return lines


def render_markdown(report: BenchReport) -> str:
    pub = report.published
    lines = [
        f"# Benchmark: {report.model} on {report.target}",
        "",
        *recommendation_lines(report),
        f"Runtime: {report.runtime}. Created {report.created_at.isoformat(timespec='seconds')} on "
        + ", ".join(f"{k} {v}" for k, v in report.host.items())
        + ".",
        f"Requested shape: {report.settings.input_len} input tokens, {report.settings.output_len} output "
        f"tokens, {report.settings.latency_runs} latency runs and {report.settings.throughput_runs} runs per "
        f"batch size after {report.settings.warmup_runs} warm-up run(s)"
        + (
            f", {report.settings.served_runs} aiperf profile runs per client count served"
            if report.settings.wants_served_load
            else ""
        )
        + f", synthetic prompts "
        f"(seed {report.settings.seed}), no early stop.",
        "",
        *machine_lines(report),
        "",
        NOISY_NOTE,
        "",
        previous_text(report),
        "",
        SPEED_NOTE,
        "",
        *plan_note(report),
        "## Latency (batch 1)",
        "",
        "| engine | measured by | runs | TTFT ms | inter-token p50 / p90 / p99 (ms) | decode tokens/s "
        "| plan ceiling tokens/s | measured / ceiling |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in report.variants:
        lines.append(
            f"| {variant_label(v)} | {v.latency.measured_by} | {v.latency.runs} | {spread_text(v.latency.ttft_ms, 2)} | {_pct(v.latency.itl)} "
            f"| {spread_text(v.latency.decode_tokens_per_s)} "
            f"| {plan_cell(report, f'{v.plan.decode_ceiling_tokens_per_s:.1f}')} "
            f"| {plan_cell(report, ratio_text(v.ratios.decode_vs_ceiling))} |"
        )
    lines += [
        "",
        "## Throughput (static batches, in process, not streamed)",
        "",
    ]
    if any(v.throughput for v in report.variants):
        lines += [
            "| engine | measured by | batch | runs | output tokens/s | TTFT ms (prefill) | decode step ms "
            "| wall (s, median) | bandwidth ceiling tokens/s | measured / ceiling |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {variant_label(v)} | {p.measured_by} | {p.batch_size} | {p.runs} "
            f"| {spread_text(p.output_tokens_per_s)} "
            f"| {spread_text(p.ttft_ms, 2)} | {spread_text(p.step_ms, 2)} | {p.wall_s:.3f} "
            f"| {plan_cell(report, f'{c.ceiling_tokens_per_s:.1f}')} "
            f"| {plan_cell(report, ratio_text(c.measured_vs_ceiling))} |"
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
    lines += [
        "",
        f"![output tokens/s by batch size]({THROUGHPUT_PLOT})",
        "",
        "*Whether a larger batch (or more clients) still buys output tokens/s, with each run's range"
        + (
            ", and how far each sits below the plan's bandwidth ceiling (dotted).*"
            if report.plan_applies
            else ".*"
        ),
    ]
    lines += ["", *served_lines(report)]
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
            f"| {variant_label(v)} | {measure} | {peak} | {plan_cell(report, _gib(v.plan.memory_estimate_bytes))} "
            f"| {plan_cell(report, ratio_text(v.ratios.peak_memory_vs_estimate))} | {_utilization(v)} |"
        )
    if any(v.memory is None for v in report.variants):
        lines += ["", "- not observable: the engine ran in a CPU server process this client cannot measure"]
    lines += ["", *utilization_lines(report)]
    lines += [
        "",
        f"![peak memory per engine]({MEMORY_PLOT})",
        "",
        "*How much memory each engine holds at its peak"
        + (", against the plan's estimate.*" if report.plan_applies else ".*"),
    ]
    lines += [
        "",
        "## Formats side by side",
        "",
        "Each engine's measured speed and peak memory beside its plan's figures, and its gate's checks.",
        "",
        *formats_table(report),
        "",
        f"![gate checks]({GATE_PLOT})",
        "",
        "*Whether each engine passed each gate check, and how far its value sits from that format's threshold.*",
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
    lines.append("")
    return "\n".join(lines)
