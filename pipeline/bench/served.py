"""Served load: a server measured as its clients see it, by aiperf (pipeline.bench.aiperf).

Every endpoint (a published variant's Triton server, the server at --server-url,
an OpenAI-compatible peer) gets the same prompt file and one aiperf run per
client count, repeated (aiperf's profile runs); the runs' exports become one
ServedPoint. Prompts are written with the model's tokenizer so that each fits
the engine's max_input_len after the server's own tokenization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.bench.aiperf import Target, latency_of, run_level, served_point, write_prompts
from pipeline.bench.results import LatencyResult, ServedPoint
from pipeline.bench.workload import ServedCase, Workload, synthetic_prompts
from pipeline.core.errors import InputError
from pipeline.core.reporter import Reporter


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


@dataclass(frozen=True)
class LoadPlan:
    """What aiperf sends to every endpoint: one prompt file, the client counts, the warm-up."""

    prompts_file: Path
    tokenizer_dir: Path
    cases: tuple[ServedCase, ...]
    warmup_requests: int  # per run, before aiperf starts timing


def load_plan(
    workload: Workload,
    tokenizer: Tokenizer,
    *,
    tokenizer_dir: Path,
    vocab_size: int,
    seed: int,
    warmup_runs: int,
    path: Path,
) -> LoadPlan:
    cases = workload.served
    count = max([c.requests for c in cases] + [workload.latency.runs])
    prompts = text_prompts(tokenizer, count, workload.latency.input_len, vocab_size, seed)
    return LoadPlan(
        prompts_file=write_prompts(path, prompts, workload.latency.output_len),
        tokenizer_dir=tokenizer_dir,
        cases=cases,
        warmup_requests=warmup_runs,
    )


def sweep(
    aiperf: Path,
    target: Target,
    plan: LoadPlan,
    *,
    out_dir: Path,
    reporter: Reporter,
    cases: Sequence[ServedCase] | None = None,
) -> tuple[ServedPoint, ...]:
    """One aiperf run per client count against `target`; artifacts under out_dir/c<N>."""
    cases = plan.cases if cases is None else tuple(cases)
    points = []
    with reporter.progress(f"aiperf {target.name}", total=len(cases), unit="level") as advance:
        for case in cases:
            runs = run_level(
                aiperf,
                target,
                case,
                prompts_file=plan.prompts_file,
                tokenizer_dir=plan.tokenizer_dir,
                out_dir=out_dir,
                warmup_requests=plan.warmup_requests,
            )
            points.append(served_point([export for export, _ in runs], case, target))
            advance(1)
    return tuple(points)


def latency_through(
    aiperf: Path, target: Target, plan: LoadPlan, workload: Workload, *, out_dir: Path
) -> LatencyResult:
    """Batch 1 through the server: one client sending workload.latency.runs requests, one after another."""
    latency = workload.latency
    # One profile run: its requests are the runs of batch 1, as the in-process harness's are.
    case = ServedCase(
        concurrency=1,
        requests=latency.runs,
        runs=1,
        input_len=latency.input_len,
        output_len=latency.output_len,
    )
    ((export, path),) = run_level(
        aiperf,
        target,
        case,
        prompts_file=plan.prompts_file,
        tokenizer_dir=plan.tokenizer_dir,
        out_dir=out_dir / "latency",
        warmup_requests=plan.warmup_requests,
    )
    return latency_of(export, case, path)
