"""Set a bench report beside the previous one in its folder: a figure of the same engine, shape and
machine whose range lies apart from the previous run's is marked noisy. Pure.

Why: a range taken inside one bench cannot see the machine move between two benches. On a shared
2-core VM two benches ten seconds apart read 4931 (4533-4984) and then 5864 (5585-5874) tokens/s
for the same engine bytes, each range within 10%. With the bytes, the shape and the host the same, such a
difference is the machine's, and a figure it moved is not one to rank variants by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from pipeline.bench.results import (
    BenchReport,
    LatencyResult,
    PreviousBench,
    ServedPoint,
    ThroughputPoint,
    VariantResult,
)
from pipeline.bench.stats import RunPercentiles, Spread, overlap

Model = TypeVar("Model", bound=BaseModel)


@dataclass
class _Tally:
    compared: int = 0
    apart: int = 0
    largest_shift: float = 0.0  # |median now - median before| / median before, over the apart figures

    def mark(self, now: Spread, before: Spread) -> Spread:
        self.compared += 1
        if overlap(now, before):
            return now
        self.apart += 1
        if before.median > 0:
            self.largest_shift = max(self.largest_shift, abs(now.median - before.median) / before.median)
        return now.model_copy(update={"apart_from": before.model_copy(update={"apart_from": None})})


def _mark_fields(now: Model, before: Model, tally: _Tally) -> Model:
    """Every Spread (and RunPercentiles' Spreads) of `now`, marked against the same field of `before`."""
    update: dict[str, Any] = {}
    for name in type(now).model_fields:
        a, b = getattr(now, name), getattr(before, name)
        if isinstance(a, Spread) and isinstance(b, Spread):
            update[name] = tally.mark(a, b)
        elif isinstance(a, RunPercentiles) and isinstance(b, RunPercentiles):
            update[name] = _mark_fields(a, b, tally)
    return now.model_copy(update=update)


def _shape(p: LatencyResult | ThroughputPoint | ServedPoint) -> tuple[Any, ...]:
    """What a figure's workload was: only the same workload's figures are set side by side."""
    common = (type(p).__name__, p.input_len, p.output_len, p.runs, p.measured_by)
    if isinstance(p, ThroughputPoint):
        return (*common, p.batch_size)
    if isinstance(p, ServedPoint):
        return (*common, p.concurrency, p.requests)
    return common


Point = TypeVar("Point", LatencyResult, ThroughputPoint, ServedPoint)


def _points(now: tuple[Point, ...], before: tuple[Point, ...], tally: _Tally) -> tuple[Point, ...]:
    earlier = {_shape(p): p for p in before}
    return tuple(_mark_fields(p, earlier[_shape(p)], tally) if _shape(p) in earlier else p for p in now)


def _variant(now: VariantResult, before: VariantResult, tally: _Tally) -> VariantResult:
    (latency,) = _points((now.latency,), (before.latency,), tally)
    return now.model_copy(
        update={
            "latency": latency,
            "throughput": _points(now.throughput, before.throughput, tally),
            "served": _points(now.served, before.served, tally),
        }
    )


def why_not_comparable(report: BenchReport, previous: BenchReport) -> str | None:
    """Why the previous report's figures say nothing about this machine now, or None when they do."""
    if (previous.model, previous.target) != (report.model, report.target):
        return f"it measured {previous.model} on {previous.target}"
    if previous.host != report.host or (previous.machine.cpu_model, previous.machine.cpu_count) != (
        report.machine.cpu_model,
        report.machine.cpu_count,
    ):
        return "it ran on another host, runtime or thread count"
    return None


def against_previous(report: BenchReport, previous: BenchReport) -> BenchReport:
    """`report` with every figure that lies apart from the previous run's marked, and a summary."""
    reason = why_not_comparable(report, previous)
    if reason is not None:
        return report.model_copy(
            update={"previous": PreviousBench(created_at=previous.created_at, not_compared=reason)}
        )
    tally = _Tally()
    # The same engine is the same bytes: builds are content-addressed, so the folder names them.
    earlier = {(v.label, v.engine_dir): v for v in previous.variants}
    variants = tuple(
        _variant(v, earlier[(v.label, v.engine_dir)], tally) if (v.label, v.engine_dir) in earlier else v
        for v in report.variants
    )
    return report.model_copy(
        update={
            "variants": variants,
            "previous": PreviousBench(
                created_at=previous.created_at,
                figures_compared=tally.compared,
                figures_apart=tally.apart,
                largest_shift=tally.largest_shift,
            ),
        }
    )
