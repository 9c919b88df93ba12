"""The sweet spot: each variant's throughput against its latency, and what to deploy for a budget. Pure.

Every batch size (in process) or client count (served) is one operating point:
output tokens/s against the latency a client sees there. A point is within the
budget when its inter-token time and its time to first token are both at most
the budget's, in the slowest of the point's runs. Served points are held to
their p99 (many requests per run); an in-process static batch has one prefill
and one step time per run, so its slowest run stands in for a tail the run
cannot observe. The recommendation is the point within the budget with
the most output tokens/s, with every other variant's best point whose runs
overlap its runs (the bench cannot rank those); the long-context answer is the
plan's largest batch at the longest profile's max_seq_len.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipeline.bench.results import BenchReport, PeerResult, ServedPoint, VariantResult
from pipeline.bench.stats import Spread, overlap


class OperatingPoint(BaseModel):
    model_config = ConfigDict(frozen=True)
    variant: str  # backend/precision/profile
    load: int  # batch size (in process) or concurrent clients (served)
    load_kind: str  # "batch" or "clients"
    tokens_per_s: Spread
    itl_ms: float  # what the budget is checked against (see held_to)
    ttft_ms: float
    itl_p50_ms: float  # the typical inter-token time, for the plot's other panel
    ttft_p50_ms: float
    held_to: str  # which figure of the run the budget checks, in words
    measured_by: str

    @property
    def at(self) -> str:
        return f"{self.load_kind} {self.load}"

    def within(self, itl_budget_ms: float, ttft_budget_ms: float) -> bool:
        return self.itl_ms <= itl_budget_ms and self.ttft_ms <= ttft_budget_ms


def operating_points(v: VariantResult) -> list[OperatingPoint]:
    label = v.label
    points = [
        OperatingPoint(
            variant=label,
            load=p.batch_size,
            load_kind="batch",
            tokens_per_s=p.output_tokens_per_s,
            itl_ms=p.step_ms.high,
            ttft_ms=p.ttft_ms.high,
            itl_p50_ms=p.step_ms.median,
            ttft_p50_ms=p.ttft_ms.median,
            held_to="decode step and prefill of the slowest run",
            measured_by=p.measured_by,
        )
        for p in v.throughput
    ]
    return points + served_points(label, v.served)


def served_points(label: str, served: tuple[ServedPoint, ...]) -> list[OperatingPoint]:
    return [
        OperatingPoint(
            variant=label,
            load=p.concurrency,
            load_kind="clients",
            tokens_per_s=p.output_tokens_per_s,
            itl_ms=p.itl.p99_ms.high,
            ttft_ms=p.ttft.p99_ms.high,
            itl_p50_ms=p.itl.p50_ms.median,
            ttft_p50_ms=p.ttft.p50_ms.median,
            held_to="p99 inter-token and p99 TTFT of the slowest run",
            measured_by=f"{p.measured_by} (streamed requests to the server)",
        )
        for p in served
        if p.itl is not None  # one-token answers have no inter-token time to hold to a budget
    ]


def peer_label(peer: PeerResult) -> str:
    return f"peer {peer.name}"


def peer_points(peer: PeerResult) -> list[OperatingPoint]:
    return served_points(peer_label(peer), peer.served)


class LongContextPick(BaseModel):
    model_config = ConfigDict(frozen=True)
    profile: str
    max_seq_len: int
    variants: tuple[str, ...]  # the ones that fit the most, ties together
    sequences: int


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True)
    itl_budget_ms: float
    ttft_budget_ms: float
    best: OperatingPoint | None  # None: no point meets the budget
    # Other variants' best points within the budget whose tokens/s runs overlap the best's: as good
    # for all these runs can tell, most tokens/s first.
    level_with: tuple[OperatingPoint, ...] = ()
    per_variant: tuple[tuple[str, OperatingPoint | None], ...]  # each variant's best within the budget
    per_peer: tuple[tuple[str, OperatingPoint | None], ...] = ()  # each --compare peer's, beside them
    fastest_outside: OperatingPoint | None  # the most tokens/s of any point, for a budget none meets
    long_context: LongContextPick


def _most(points: list[OperatingPoint]) -> OperatingPoint | None:
    return max(points, key=lambda p: p.tokens_per_s.median, default=None)


def long_context_pick(report: BenchReport) -> LongContextPick:
    """Of the profile with the longest max_seq_len, the variants whose plan fits the most sequences."""
    longest = max(v.limits["max_seq_len"] for v in report.variants)
    candidates = [v for v in report.variants if v.limits["max_seq_len"] == longest]
    most = max(v.plan.largest_batch_at_max_seq_len for v in candidates)
    winners = [v for v in candidates if v.plan.largest_batch_at_max_seq_len == most]
    return LongContextPick(
        profile=", ".join(dict.fromkeys(v.profile for v in winners)),
        max_seq_len=longest,
        variants=tuple(v.label for v in winners),
        sequences=most,
    )


def recommend(report: BenchReport) -> Recommendation:
    itl, ttft = report.settings.itl_budget_ms, report.settings.ttft_budget_ms
    per_variant = []
    everything = []
    for v in report.variants:
        points = operating_points(v)
        everything += points
        per_variant.append((v.label, _most([p for p in points if p.within(itl, ttft)])))
    within = [p for _, p in per_variant if p is not None]
    # Peers stand beside the variants for comparison; the answer is which published variant to deploy.
    per_peer = [
        (peer_label(peer), _most([p for p in peer_points(peer) if p.within(itl, ttft)]))
        for peer in report.peers
    ]
    best = _most(within)
    level_with = sorted(
        (
            p
            for p in within
            if best is not None and p is not best and overlap(p.tokens_per_s, best.tokens_per_s)
        ),
        key=lambda p: -p.tokens_per_s.median,
    )
    return Recommendation(
        itl_budget_ms=itl,
        ttft_budget_ms=ttft,
        best=best,
        level_with=tuple(level_with),
        per_variant=tuple(per_variant),
        per_peer=tuple(per_peer),
        fastest_outside=_most(everything) if not within else None,
        long_context=long_context_pick(report),
    )
