"""Served mode: a published Triton server measured as its clients see it.

Latency comes from requests sent one at a time; throughput from a stream of
concurrent requests: each of `concurrency` client threads sends its next
request as soon as its previous answer ends, to
`/v2/models/ensemble/generate_stream` (server-sent events), so the server's
in-flight batcher always holds up to `concurrency` requests. The TensorRT-LLM
backend streams one response per generated token; each `data:` event is
counted as one token and timed when it arrives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pipeline.backends.base import NO_END_ID
from pipeline.bench.harness import Clock, latency_result
from pipeline.bench.results import LatencyResult, ServedPoint
from pipeline.bench.stats import RequestTimeline, itl_percentiles, tokens_per_second, ttft_percentiles
from pipeline.bench.workload import ServedCase, Workload, synthetic_prompts
from pipeline.core.errors import InputError, StageError
from pipeline.core.reporter import Reporter
from pipeline.serving.client import GenerateClient, endpoint_url
from pipeline.serving.models.tensornames import Text

ENSEMBLE = "ensemble"
UNREACHABLE = "is the server up and serving this engine? start it on the published repository"
SERVED_SOURCE = (
    "client side: each server-sent event of /v2/models/ensemble/generate_stream timed on this "
    "process's monotonic clock as it arrives (HTTP, JSON and the server's tokenization included)"
)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def text_prompts(tokenizer: Tokenizer, count: int, input_len: int, vocab_size: int, seed: int) -> list[str]:
    """Prompt texts whose encoding (as the server's preprocessing encodes them) fits `input_len` tokens.

    Decoding random ids and encoding the text again does not always give the
    same count, so each prompt is shortened until it fits: no request can
    exceed the engine's max_input_len.
    """
    prompts = []
    for ids in synthetic_prompts(count, input_len, vocab_size, seed):
        keep = len(ids)
        while True:
            text = tokenizer.decode(ids[:keep], skip_special_tokens=True)
            encoded = len(tokenizer.encode(text))
            if encoded <= input_len and text:
                break
            # Shrink in proportion to the overshoot, by one id at least.
            keep = min(keep - 1, keep * input_len // max(encoded, 1))
            if keep < 1:
                raise InputError(f"cannot write a prompt of at most {input_len} tokens with this tokenizer")
        prompts.append(text)
    return prompts


def _timeline(client: GenerateClient, body: dict[str, Any], clock: Clock) -> RequestTimeline:
    sent = clock()
    arrivals = tuple(clock() for _event in client.generate_stream(ENSEMBLE, body))
    return RequestTimeline(sent, arrivals)


def stream_requests(
    server_url: str,
    prompts: Sequence[str],
    *,
    output_len: int,
    concurrency: int,
    clock: Clock,
    timeout_s: float,
) -> tuple[list[RequestTimeline], float]:
    """Send every prompt through `concurrency` clients; each request's timeline, and the wall time of all."""
    pending = list(enumerate(prompts))
    lock = threading.Lock()
    timelines: list[RequestTimeline | None] = [None] * len(prompts)
    failures: list[StageError] = []

    def client() -> None:
        with GenerateClient(
            server_url, stage="bench", timeout_s=timeout_s, unreachable_hint=UNREACHABLE
        ) as http:
            while not failures:
                with lock:
                    if not pending:
                        return
                    index, text = pending.pop(0)
                body = {
                    Text.TEXT_INPUT: text,
                    Text.MAX_TOKENS: output_len,
                    # No token id is negative: no early stop, every request yields output_len tokens
                    # (TensorRT-LLM's benchmarks ignore the end token the same way).
                    Text.END_ID: NO_END_ID,
                    Text.TEMPERATURE: 0.0,
                    Text.STREAM: True,
                }
                try:
                    timelines[index] = _timeline(http, body, clock)
                except StageError as exc:
                    failures.append(exc)

    started = clock()
    threads = [threading.Thread(target=client, name=f"bench-client-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = clock() - started
    if failures:
        raise failures[0]
    done = [t for t in timelines if t is not None]
    if any(t.output_tokens == 0 for t in done):
        url = endpoint_url(server_url, ENSEMBLE, "generate_stream")
        raise StageError("bench", f"{url}: a request streamed no token")
    return done, wall


def served_point(case: ServedCase, timelines: Sequence[RequestTimeline], wall_s: float) -> ServedPoint:
    tokens = sum(t.output_tokens for t in timelines)
    return ServedPoint(
        concurrency=case.concurrency,
        requests=len(timelines),
        input_len=case.input_len,
        output_len=case.output_len,
        output_tokens=tokens,
        wall_s=wall_s,
        output_tokens_per_s=tokens_per_second(tokens, wall_s),
        ttft=ttft_percentiles(timelines),
        itl=itl_percentiles(timelines),
        source=SERVED_SOURCE,
    )


def measure_server(
    server_url: str,
    workload: Workload,
    prompts: Callable[[int, int], list[str]],
    *,
    reporter: Reporter,
    label: str,
    clock: Clock,
    timeout_s: float = 600.0,
) -> tuple[LatencyResult, tuple[ServedPoint, ...]]:
    """Batch-1 latency from requests sent one at a time, then one point per client count.

    `prompts(count, seed)` gives prompt texts that fit the engine's max_input_len.
    """
    latency = workload.latency
    total = 1 + len(workload.served)
    with reporter.progress(f"bench {label} (served)", total=total, unit="level") as advance:
        if workload.warmup is not None:
            stream_requests(
                server_url,
                prompts(workload.warmup.runs, -1),
                output_len=workload.warmup.output_len,
                concurrency=1,
                clock=clock,
                timeout_s=timeout_s,
            )
        timelines, _ = stream_requests(
            server_url,
            prompts(latency.runs, 0),
            output_len=latency.output_len,
            concurrency=1,
            clock=clock,
            timeout_s=timeout_s,
        )
        advance(1)
        points = []
        for case in workload.served:
            done, wall = stream_requests(
                server_url,
                prompts(case.requests, case.concurrency),
                output_len=case.output_len,
                concurrency=case.concurrency,
                clock=clock,
                timeout_s=timeout_s,
            )
            points.append(served_point(case, done, wall))
            advance(1)
    return latency_result(latency, timelines, SERVED_SOURCE), tuple(points)
