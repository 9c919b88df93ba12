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
    itl_percentiles,
    median_decode_tokens_per_s,
    tokens_per_second,
    ttft_percentiles,
)
from pipeline.bench.workload import Case, Workload, synthetic_prompts
from pipeline.core.errors import StageError
from pipeline.core.reporter import Reporter
from pipeline.runtime.checkpoint import real_vocab_size

Clock = Callable[[], float]

LATENCY_SOURCE = (
    "batch 1, streamed: each token timed on this process's monotonic clock when the runtime hands it "
    "over (on_token); includes the runtime's per-step host work for that one request"
)
THROUGHPUT_SOURCE = (
    "one non-streamed generate call per run: output tokens / wall time from sending the batch to the "
    "return of generate, on this process's monotonic clock; no per-token times (streaming a batch "
    "would time the runtime's per-request host work)"
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
    clock: Clock = time.perf_counter,
) -> EngineTimings:
    """Warm up, then batch-1 latency runs, then one point per batch size."""
    vocab_size = vocab_size_of(runner)
    calls = (workload.warmup.runs if workload.warmup else 0) + workload.latency.runs
    calls += sum(c.runs for c in workload.throughput)

    def prompts_of(case: Case, run: int) -> list[list[int]]:
        return synthetic_prompts(case.batch_size, case.input_len, vocab_size, seed + run)

    def streamed(case: Case, advance: Callable[[float], None]) -> list[RequestTimeline]:
        out = []
        for run in range(case.runs):
            (prompt,) = prompts_of(case, run)
            out.append(stream_one(runner, prompt, case.output_len, clock))
            advance(1)
        return out

    def batched(case: Case, advance: Callable[[float], None]) -> list[BatchRun]:
        out = []
        for run in range(case.runs):
            out.append(run_batch(runner, prompts_of(case, run), case.output_len, clock))
            advance(1)
        return out

    with reporter.progress(f"bench {label}", total=calls, unit="run") as advance:
        if workload.warmup is not None:
            streamed(workload.warmup, advance)
        timelines = streamed(workload.latency, advance)
        points = tuple(_throughput_point(case, batched(case, advance)) for case in workload.throughput)
    return EngineTimings(latency=latency_result(workload.latency, timelines), throughput=points)


def latency_result(
    case: Case, timelines: Sequence[RequestTimeline], source: str = LATENCY_SOURCE
) -> LatencyResult:
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
        source=source,
    )


def _throughput_point(case: Case, runs: list[BatchRun]) -> ThroughputPoint:
    return ThroughputPoint(
        batch_size=case.batch_size,
        input_len=case.input_len,
        output_len=case.output_len,
        runs=case.runs,
        output_tokens=runs[0].output_tokens,
        wall_s=statistics.median(r.wall_s for r in runs),
        output_tokens_per_s=statistics.median(tokens_per_second(r.output_tokens, r.wall_s) for r in runs),
        source=THROUGHPUT_SOURCE,
    )
