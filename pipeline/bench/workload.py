"""What to run against one engine, planned from its profile's limits. Pure.

The engine's own limits (the runner's `.limits`, read from its config.json)
bound every request: prompts never exceed max_input_len, a batch never exceeds
max_batch_size, prompt + output never exceed max_seq_len. The planner clamps
the requested shape to fit and says what it changed; the harness checks every
request against the runner's limits again before sending it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import InputError

if TYPE_CHECKING:
    from pipeline.runtime.limits import EngineLimits


class BenchSettings(BaseModel):
    """The requested shape of the benchmark; clamped per engine by `plan_workload`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_len: Annotated[int, Field(ge=1)] = 128
    output_len: Annotated[int, Field(ge=2)] = 128  # two at least: one inter-token gap
    latency_runs: Annotated[int, Field(ge=1)] = 5
    # Three runs at least give a median with a range around it; batches cost little on the demo.
    throughput_runs: Annotated[int, Field(ge=1)] = 3
    warmup_runs: Annotated[int, Field(ge=0)] = 1
    batch_sizes: tuple[Annotated[int, Field(ge=1)], ...] | None = None  # None: 1, 2, 4, ... max_batch_size
    seed: int = 0
    # The latency budget the recommendation holds each operating point to (pipeline.bench.sweetspot):
    # 50 ms between tokens reads as fluent streaming (20 tokens/s, faster than people read), and half
    # a second before the first token as a prompt answer; both are the examples, and options.
    itl_budget_ms: Annotated[float, Field(gt=0)] = 50.0
    ttft_budget_ms: Annotated[float, Field(gt=0)] = 500.0
    # Served load, measured by aiperf: the Triton server at server_url (serving the one selected
    # engine, nothing measured in process), or (served) each published variant on a tritonserver this
    # bench starts, beside the in-process figures; and OpenAI-compatible peers under the same load.
    server_url: str | None = None
    served: bool = False
    compare: tuple[str, ...] = ()
    concurrency: tuple[Annotated[int, Field(ge=1)], ...] | None = None  # None: 1, 2, 4, ... max_batch_size
    requests_per_client: Annotated[int, Field(ge=1)] = 4
    # aiperf's repeated profile runs per client count (--num-profile-runs), three as for the in-process
    # batches: a median with a range; aiperf takes at most 10 (config/flags/cli_config.py, num_profile_runs).
    served_runs: Annotated[int, Field(ge=1, le=10)] = 3

    @property
    def wants_served_load(self) -> bool:
        return self.server_url is not None or self.served or bool(self.compare)


class Case(BaseModel):
    model_config = ConfigDict(frozen=True)
    batch_size: int
    input_len: int
    output_len: int
    runs: int


class ServedCase(BaseModel):
    model_config = ConfigDict(frozen=True)
    concurrency: int  # clients, each sending its next request when its previous one ends
    requests: int  # per run
    runs: int  # aiperf profile runs, the warm-up before the first only
    input_len: int
    output_len: int


class Workload(BaseModel):
    model_config = ConfigDict(frozen=True)
    latency: Case  # batch 1: time to first token, inter-token latency, decode tokens/s
    throughput: tuple[Case, ...]  # one per batch size, ascending
    served: tuple[ServedCase, ...]  # only with served load asked for (settings.wants_served_load)
    warmup: Case | None
    adjustments: tuple[str, ...]  # what was clamped to fit the profile, for the report


def default_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below the maximum, then the maximum itself."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


def plan_workload(limits: EngineLimits, settings: BenchSettings) -> Workload:
    adjustments = []
    input_len = settings.input_len
    if input_len > limits.max_input_len:
        input_len = limits.max_input_len
        adjustments.append(f"input_len {settings.input_len} -> {input_len} (max_input_len)")
    output_len = settings.output_len
    room = limits.max_seq_len - input_len
    if output_len > room:
        output_len = room
        adjustments.append(f"output_len {settings.output_len} -> {output_len} (max_seq_len - input_len)")
    if output_len < 2:
        raise InputError(
            f"the profile leaves room for {output_len} output token(s) after a {input_len}-token prompt; "
            "an inter-token latency needs two",
            hint="lower --input-len",
        )
    if settings.batch_sizes is None:
        batch_sizes = default_batch_sizes(limits.max_batch_size)
    else:
        batch_sizes = tuple(sorted({b for b in settings.batch_sizes if b <= limits.max_batch_size}))
        beyond = sorted({b for b in settings.batch_sizes if b > limits.max_batch_size})
        if beyond:
            adjustments.append(
                f"batch sizes {', '.join(map(str, beyond))} skipped (max_batch_size {limits.max_batch_size})"
            )
        if not batch_sizes:
            batch_sizes = (limits.max_batch_size,)
    warmup = (
        Case(batch_size=1, input_len=input_len, output_len=2, runs=settings.warmup_runs)
        if settings.warmup_runs
        else None
    )
    served = ()
    if settings.server_url is not None:
        # The server holds the engine (and, on a GPU, most of the memory): nothing runs in-process.
        batch_sizes = ()
    if settings.wants_served_load:
        # More clients than max_batch_size only queue in the server: allowed, it shows the plateau.
        levels = settings.concurrency or default_batch_sizes(limits.max_batch_size)
        served = tuple(
            ServedCase(
                concurrency=c,
                requests=c * settings.requests_per_client,
                runs=settings.served_runs,
                input_len=input_len,
                output_len=output_len,
            )
            for c in sorted(set(levels))
        )
    return Workload(
        served=served,
        latency=Case(batch_size=1, input_len=input_len, output_len=output_len, runs=settings.latency_runs),
        throughput=tuple(
            Case(batch_size=b, input_len=input_len, output_len=output_len, runs=settings.throughput_runs)
            for b in batch_sizes
        ),
        warmup=warmup,
        adjustments=tuple(adjustments),
    )


def synthetic_prompts(batch_size: int, input_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Deterministic random token ids from the upper half of the vocabulary.

    Timing depends on lengths, not content; the upper half holds none of the
    special or control tokens of Mistral's tokenizer or the tiny model's.
    """
    rng = random.Random(seed)
    low = vocab_size // 2
    return [[rng.randrange(low, vocab_size) for _ in range(input_len)] for _ in range(batch_size)]
