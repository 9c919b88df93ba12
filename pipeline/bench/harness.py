"""Drive an EngineRunner through a Workload: batch-1 latency from streamed tokens, throughput without streaming.

Why two ways: streaming through TensorRT-LLM 1.2's ModelRunnerCpp costs host
work per step for every request in the batch (its `_stream` -> `_fill_output`
deep-copies each request's tokens, pads them to max_seq_len and builds new
device tensors at every step), so token times at batch > 1 would time Python.
At batch 1 that work is one request's, and the token times are the engine's
to within it; a batch is timed as one non-streamed generate call (tokens /
wall time). Times come from an injectable clock (tests pass a fake one), and
every request is checked against the runner's own limits before it is sent.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.backends.base import EngineRunner
from pipeline.bench.results import LatencyResult, ThroughputPoint
from pipeline.bench.stats import (
    RequestTimeline,
    Spread,
    decode_tokens_per_s_spread,
    itl_percentiles,
    tokens_per_second,
    ttft_ms_spread,
)
from pipeline.bench.workload import Case, Workload, synthetic_prompts
from pipeline.core.errors import StageError
from pipeline.core.reporter import Reporter
from pipeline.runtime.checkpoint import real_vocab_size

Clock = Callable[[], float]

IN_PROCESS_HARNESS = "in-process harness (this process's clock)"


def in_process(runtime: str) -> str:
    """What measured an in-process figure: this harness, driving the runtime that ran the build."""
    return f"{IN_PROCESS_HARNESS} over {runtime}"


LATENCY_SOURCE = (
    "batch 1, streamed: each token timed on this process's monotonic clock when the runtime hands it "
    "over (on_token); includes the runtime's per-step host work for that one request. TTFT and decode "
    "tokens/s (tokens after the first / their span): median and min-max over the runs; inter-token "
    "percentiles over every gap of every run"
)
THROUGHPUT_SOURCE = (
    "per run, two non-streamed generate calls on the same prompts: one output token (the batch's "
    "prefill: its time to first token), then every output token (output tokens / wall time from "
    "sending the batch to the return of generate, prefill included; decode step = (that wall time - "
    "the prefill call's) / (output tokens - 1)), on this process's monotonic clock; median and "
    "min-max over the runs, after a warm-up call at the same batch size; no per-token times "
    "(streaming a batch would time the runtime's per-request host work)"
)


def stream_one(runner: EngineRunner, prompt: list[int], output_len: int, clock: Clock) -> RequestTimeline:
    """Send one request, streamed, and record when each of its tokens arrives."""
    runner.limits.check([len(prompt)], output_len)
    arrivals: list[float] = []

    def on_token(_index: int, _token: int) -> None:
        arrivals.append(clock())

    sent = clock()
    # end_id None: no early stop, so every request yields output_len tokens and runs are comparable.
    (returned,) = runner.generate([prompt], max_new_tokens=output_len, end_id=None, on_token=on_token)
    if len(arrivals) != len(returned):
        raise StageError(
            "bench",
            f"the runner streamed {len(arrivals)} tokens through on_token but returned {len(returned)}; "
            "token timings need every token streamed",
        )
    return RequestTimeline(sent, tuple(arrivals))


@dataclass(frozen=True)
class BatchRun:
    output_tokens: int
    wall_s: float  # from sending the batch to the return of generate


@dataclass(frozen=True)
class TimedBatch:
    """One run at a batch size: the prefill call (one token) and the whole call, same prompts."""

    prefill: BatchRun
    whole: BatchRun
    output_len: int

    @property
    def step_s(self) -> float:
        """A decode step: each request of a static batch gets one token per step, after the prefill."""
        return (self.whole.wall_s - self.prefill.wall_s) / (self.output_len - 1)


def run_batch(runner: EngineRunner, prompts: list[list[int]], output_len: int, clock: Clock) -> BatchRun:
    """Send one batch (every request at the same instant), not streamed, and time the whole call."""
    runner.limits.check([len(p) for p in prompts], output_len)
    sent = clock()
    outputs = runner.generate(prompts, max_new_tokens=output_len, end_id=None)
    done = clock()
    return BatchRun(sum(len(o) for o in outputs), done - sent)


def vocab_size_of(runner: EngineRunner) -> int:
    try:
        return real_vocab_size(runner.engine_config["pretrained_config"])
    except (KeyError, TypeError, ValueError):
        raise StageError("bench", "the engine's config.json has no pretrained_config.vocab_size") from None


@dataclass(frozen=True)
class EngineTimings:
    latency: LatencyResult
    throughput: tuple[ThroughputPoint, ...]


def measure_engine(
    runner: EngineRunner,
    workload: Workload,
    *,
    seed: int,
    reporter: Reporter,
    label: str,
    runtime: str,
    clock: Clock = time.perf_counter,
) -> EngineTimings:
    """Warm up, then batch-1 latency runs, then one point per batch size. `runtime` names what runs
    `runner` (Backend.bench_runtime), for every figure's measured_by."""
    vocab_size = vocab_size_of(runner)
    warmups = workload.warmup.runs if workload.warmup else 0
    calls = warmups + workload.latency.runs
    calls += sum(c.runs + warmups for c in workload.throughput)

    def prompts_of(case: Case, run: int) -> list[list[int]]:
        return synthetic_prompts(case.batch_size, case.input_len, vocab_size, seed + run)

    def streamed(case: Case, advance: Callable[[float], None]) -> list[RequestTimeline]:
        out = []
        for run in range(case.runs):
            (prompt,) = prompts_of(case, run)
            out.append(stream_one(runner, prompt, case.output_len, clock))
            advance(1)
        return out

    def timed(case: Case, run: int) -> TimedBatch:
        prompts = prompts_of(case, run)
        prefill = run_batch(runner, prompts, 1, clock)
        return TimedBatch(prefill, run_batch(runner, prompts, case.output_len, clock), case.output_len)

    cases = workload.throughput
    with reporter.progress(f"bench {label}", total=calls, unit="run") as advance:
        if workload.warmup is not None:
            streamed(workload.warmup, advance)
        timelines = streamed(workload.latency, advance)
        for case in cases if workload.warmup is not None else ():
            # The first call at a new batch shape pays for allocations (and kernel choice on a GPU).
            for run in range(workload.warmup.runs):
                run_batch(runner, prompts_of(case, -1 - run), workload.warmup.output_len, clock)
                advance(1)
        # In rounds, every batch size once a round: each figure's runs then span the whole measurement,
        # so a machine that drifts meanwhile shows in every range (runs back to back missed it: two
        # bench runs in a row read 3485 and 3392 tokens/s, each within a range of 2%).
        runs: list[list[TimedBatch]] = [[] for _ in cases]
        for run in range(max((case.runs for case in cases), default=0)):
            for case, done in zip(cases, runs, strict=True):
                if run < case.runs:
                    done.append(timed(case, run))
                    advance(1)
        points = tuple(
            _throughput_point(case, done, in_process(runtime)) for case, done in zip(cases, runs, strict=True)
        )
    return EngineTimings(
        latency=latency_result(workload.latency, timelines, in_process(runtime)), throughput=points
    )


def latency_result(case: Case, timelines: Sequence[RequestTimeline], measured_by: str) -> LatencyResult:
    """Batch-1 figures from the timelines of requests sent one at a time."""
    itl = itl_percentiles(timelines)
    decode = decode_tokens_per_s_spread(timelines)
    if itl is None or decode is None:
        raise StageError("bench", "no latency run produced two tokens with time between them")
    return LatencyResult(
        input_len=case.input_len,
        output_len=case.output_len,
        runs=case.runs,
        ttft_ms=ttft_ms_spread(timelines),
        itl=itl,
        decode_tokens_per_s=decode,
        measured_by=measured_by,
        source=LATENCY_SOURCE,
    )


def _throughput_point(case: Case, runs: list[TimedBatch], measured_by: str) -> ThroughputPoint:
    return ThroughputPoint(
        batch_size=case.batch_size,
        input_len=case.input_len,
        output_len=case.output_len,
        runs=case.runs,
        output_tokens=runs[0].whole.output_tokens,
        wall_s=statistics.median(r.whole.wall_s for r in runs),
        output_tokens_per_s=Spread.of(
            [tokens_per_second(r.whole.output_tokens, r.whole.wall_s) for r in runs]
        ),
        ttft_ms=Spread.of([r.prefill.wall_s * 1000 for r in runs]),
        step_ms=Spread.of([r.step_s * 1000 for r in runs]),
        measured_by=measured_by,
        source=THROUGHPUT_SOURCE,
    )
