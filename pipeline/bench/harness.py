"""Drive a Runner through a Workload and time every token it streams.

Timestamps come from the runner's `on_token(request_index, token)` callback,
read on an injectable clock (tests pass a fake one). Every request is checked
against the runner's own limits before it is sent.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.bench.results import LatencyResult, ThroughputPoint
from pipeline.bench.stats import (
    RequestTimeline,
    itl_percentiles,
    median_decode_tokens_per_s,
    tokens_per_second,
    ttft_percentiles,
)
from pipeline.bench.workload import Case, Workload, synthetic_prompts
from pipeline.errors import StageError
from pipeline.reporting import Reporter
from pipeline.runners import Runner

Clock = Callable[[], float]


@dataclass(frozen=True)
class BatchRun:
    timelines: tuple[RequestTimeline, ...]
    wall_s: float  # from sending the batch to the return of generate

    @property
    def output_tokens(self) -> int:
        return sum(t.output_tokens for t in self.timelines)


def run_batch(runner: Runner, prompts: list[list[int]], output_len: int, clock: Clock) -> BatchRun:
    """Send one batch (every request at the same instant) and record when each token arrives."""
    runner.limits.check([len(p) for p in prompts], output_len)
    arrivals: list[list[float]] = [[] for _ in prompts]

    def on_token(index: int, _token: int) -> None:
        arrivals[index].append(clock())

    sent = clock()
    # end_id None: no early stop, so every request yields output_len tokens and runs are comparable.
    outputs = runner.generate(prompts, max_new_tokens=output_len, end_id=None, on_token=on_token)
    done = clock()
    for index, (streamed, returned) in enumerate(zip(arrivals, outputs, strict=True)):
        if len(streamed) != len(returned):
            raise StageError(
                "bench",
                f"request {index}: the runner streamed {len(streamed)} tokens through on_token "
                f"but returned {len(returned)}; token timings need every token streamed",
            )
    return BatchRun(tuple(RequestTimeline(sent, tuple(a)) for a in arrivals), done - sent)


def vocab_size_of(runner: Runner) -> int:
    try:
        return int(runner.engine_config["pretrained_config"]["vocab_size"])
    except (KeyError, TypeError, ValueError):
        raise StageError("bench", "the engine's config.json has no pretrained_config.vocab_size") from None


@dataclass(frozen=True)
class EngineTimings:
    latency: LatencyResult
    throughput: tuple[ThroughputPoint, ...]


def measure_engine(
    runner: Runner,
    workload: Workload,
    *,
    seed: int,
    reporter: Reporter,
    label: str,
    clock: Clock = time.perf_counter,
) -> EngineTimings:
    """Warm up, then batch-1 latency runs, then one point per batch size."""
    vocab_size = vocab_size_of(runner)
    calls = (workload.warmup.runs if workload.warmup else 0) + workload.latency.runs
    calls += sum(c.runs for c in workload.throughput)

    def runs_of(case: Case, advance: Callable[[float], None]) -> list[BatchRun]:
        out = []
        for run in range(case.runs):
            prompts = synthetic_prompts(case.batch_size, case.input_len, vocab_size, seed + run)
            out.append(run_batch(runner, prompts, case.output_len, clock))
            advance(1)
        return out

    with reporter.progress(f"bench {label}", total=calls, unit="run") as advance:
        if workload.warmup is not None:
            runs_of(workload.warmup, advance)
        latency_runs = runs_of(workload.latency, advance)
        points = tuple(_throughput_point(case, runs_of(case, advance)) for case in workload.throughput)
    return EngineTimings(
        latency=latency_result(workload.latency, [t for r in latency_runs for t in r.timelines]),
        throughput=points,
    )


def latency_result(case: Case, timelines: Sequence[RequestTimeline]) -> LatencyResult:
    """Batch-1 figures from the timelines of requests sent one at a time."""
    itl = itl_percentiles(timelines)
    decode = median_decode_tokens_per_s(timelines)
    if itl is None or decode is None:
        raise StageError("bench", "no latency run produced two tokens with time between them")
    return LatencyResult(
        input_len=case.input_len,
        output_len=case.output_len,
        runs=case.runs,
        ttft=ttft_percentiles(timelines),
        itl=itl,
        decode_tokens_per_s=decode,
    )


def _throughput_point(case: Case, runs: list[BatchRun]) -> ThroughputPoint:
    timelines = [t for r in runs for t in r.timelines]
    return ThroughputPoint(
        batch_size=case.batch_size,
        input_len=case.input_len,
        output_len=case.output_len,
        runs=case.runs,
        output_tokens=runs[0].output_tokens,
        wall_s=statistics.median(r.wall_s for r in runs),
        output_tokens_per_s=statistics.median(tokens_per_second(r.output_tokens, r.wall_s) for r in runs),
        ttft=ttft_percentiles(timelines),
        itl=itl_percentiles(timelines),
    )
