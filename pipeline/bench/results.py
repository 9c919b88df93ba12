"""The typed figures a benchmark produces: what bench.json holds (versioned)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from pipeline.bench.machine import MachineState
from pipeline.bench.memory import MemoryReading
from pipeline.bench.stats import Percentiles, RunPercentiles, Spread
from pipeline.bench.workload import BenchSettings
from pipeline.gate.verdict import GateCheck

# 2: every figure names its source; in-process batches are timed without streaming; gate figures.
# 3: repeated figures are spreads (median, min, max, runs, noisy); the machine's load and clocks;
#    each batch's prefill (TTFT) and decode step; the latency budget in the settings; plan_applies.
# 4: served points measured by aiperf (requests/s, the tool and version, the endpoint); peers.
# 5: one report holds every selected backend's builds: each variant names its backend and the runtime
#    that ran it (the report-wide `runtime` is gone), in-process points say what measured them.
# 6: a served point is the median of repeated aiperf profile runs, with each figure's range.
# 7: a figure whose runs lie apart from the previous bench's in the folder is marked (a spread's
#    apart_from), and the report says how the two compared (previous).
BENCH_REPORT_VERSION = 7


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class LatencyResult(Frozen):
    """Batch 1, one request at a time."""

    input_len: int
    output_len: int
    runs: int
    ttft_ms: Spread  # one time to first token per run
    itl: Percentiles  # over every gap of every run: the tail a client sees
    decode_tokens_per_s: Spread  # per run: (tokens after the first) / (their span); no prefill
    measured_by: str  # the tool: the in-process harness, or aiperf and its version
    source: str  # how the times were taken, in words


class ThroughputPoint(Frozen):
    """One batch of `batch_size` requests sent together (static batch), in this process, not streamed."""

    batch_size: int
    input_len: int
    output_len: int
    runs: int
    output_tokens: int  # per run, all requests
    wall_s: float  # median over runs, from sending the batch to the return of generate
    output_tokens_per_s: Spread  # per run: every output token / the whole call, prefill included
    ttft_ms: Spread  # per run: the batch's prefill, a generate call for one output token
    step_ms: Spread  # per run: (whole call - prefill call) / (output_len - 1): the inter-token time
    measured_by: str  # the harness and the runtime it drove
    source: str


class ServedPoint(Frozen):
    """A stream of requests from `concurrency` clients to a server (in-flight batching), as aiperf measured
    it in `runs` repeated profile runs: each figure the median run's, with the lowest and highest run."""

    concurrency: int
    runs: int
    requests: int  # per run
    input_len: int
    output_len: int
    output_tokens: int  # per run (the median run's)
    wall_s: float  # median over runs
    output_tokens_per_s: Spread
    requests_per_s: Spread
    ttft: RunPercentiles
    itl: RunPercentiles | None
    measured_by: str  # the tool and its version: "aiperf 0.13.0"
    endpoint: str  # the URL the requests went to
    source: str


class PeerResult(Frozen):
    """Another OpenAI-compatible server (`bench --compare URL`) under the same aiperf workload."""

    name: str  # its base URL, as the tables and plots name it
    model: str  # what its /v1/models listed
    workload_of: str  # the variant whose served workload (prompts, lengths, client counts) it ran
    served: tuple[ServedPoint, ...]


class PlanFigures(Frozen):
    """What the memory/speed plan (pipeline.planning.memory) predicts for this precision x profile on the target."""

    decode_ceiling_tokens_per_s: float  # batch 1: memory bandwidth / bytes read per token
    bytes_read_per_token: int  # every weight once, one embedding row
    kv_bytes_per_token: int
    bandwidth_bytes_per_s: float
    memory_estimate_bytes: int  # weights + activation allowance + the KV cache budget the runtime reserves
    largest_batch_at_max_seq_len: int
    source: str  # how the estimate was obtained, in words

    def batch_ceiling_tokens_per_s(self, batch_size: int, context_len: float) -> float:
        """Bandwidth ceiling of a decode step for `batch_size` requests of `context_len` tokens each.

        One step reads the weights once for all requests and each request's KV
        cache: batch x bandwidth / (weights + batch x KV per token x context).
        It ignores compute, so large batches fall further below it.
        """
        step_bytes = self.bytes_read_per_token + batch_size * self.kv_bytes_per_token * context_len
        return batch_size * self.bandwidth_bytes_per_s / step_bytes


class BatchRatio(Frozen):
    batch_size: int
    ceiling_tokens_per_s: float  # at the mean context of the run (prompt + half the output)
    measured_vs_ceiling: float


class Ratios(Frozen):
    """Measured / planned: how close the engine comes to the plan's ceilings."""

    decode_vs_ceiling: float  # batch-1 decode tokens/s / the bandwidth ceiling
    throughput_vs_ceiling: tuple[BatchRatio, ...]  # per batch size measured in process
    peak_memory_vs_estimate: float | None  # None where the measure is not comparable (CPU RSS)
    decode_vs_published: (
        float | None
    )  # only where the published estimate applies (Mistral 7B INT8, A100 40GB)


class GateFigures(Frozen):
    """The gate's checks for this engine, read from its up-to-date gate artifact."""

    verdict: bool
    checks: tuple[GateCheck, ...]
    source: str


class VariantResult(Frozen):
    backend: str  # the config's [[backends]] name: the GPU runtime the build is for
    precision: str
    profile: str
    runtime: str  # what ran the build in this process (Backend.bench_runtime), with its version
    engine_dir: str
    limits: dict[str, int]
    adjustments: tuple[str, ...]  # how the requested shape was clamped to the profile
    latency: LatencyResult
    throughput: tuple[ThroughputPoint, ...]
    served: tuple[ServedPoint, ...] = ()
    memory: MemoryReading | None  # None: not observable from here (a CPU server's process)
    plan: PlanFigures
    ratios: Ratios
    gate: GateFigures | None = None  # None: no gate of this engine has run on these inputs

    @property
    def label(self) -> str:
        """How every table and plot names it (and --backend/--precision/--profile select it)."""
        return f"{self.backend}/{self.precision}/{self.profile}"


class PublishedEstimate(Frozen):
    """A published figure set beside the results; it applies only to its own model and target."""

    model: str
    precision: str
    target: str
    decode_tokens_per_s: float
    max_batch_size: int
    weights_gb: float
    source: str
    applies: bool  # whether this report's model/target/precision is the one the estimate is for


class PreviousBench(Frozen):
    """The bench report this one replaced in its folder, and how its figures compared (pipeline.bench.drift)."""

    created_at: datetime
    not_compared: str | None = None  # why its figures say nothing about this run's
    figures_compared: int = 0  # of the same engine bytes and shape
    figures_apart: int = 0  # whose ranges lie apart: marked noisy here
    largest_shift: float = 0.0  # the largest |median change| / previous median among those apart


class BenchReport(Frozen):
    report_version: int = BENCH_REPORT_VERSION
    created_at: datetime
    model: str
    target: str
    plan_applies: bool  # whether the plan's ceilings and memory estimate describe what ran (the backends')
    host: dict[str, str]
    machine: MachineState
    settings: BenchSettings
    variants: tuple[VariantResult, ...]
    peers: tuple[PeerResult, ...] = ()
    published: PublishedEstimate
    previous: PreviousBench | None = None  # None: no readable earlier report in the folder

    @property
    def runtime(self) -> str:
        """What ran the builds, each runtime once, in the variants' order."""
        return "; ".join(dict.fromkeys(v.runtime for v in self.variants))
