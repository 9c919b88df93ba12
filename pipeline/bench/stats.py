"""Pure timing statistics: percentiles, time to first token, inter-token latency, tokens/s.

Times are seconds from one monotonic clock. A request's timeline is the time it
was sent and the time each of its output tokens arrived; every latency figure
is derived from timelines, never measured twice in two ways.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, computed_field

PERCENTILES = (50, 90, 99)

# A figure whose runs span (max - min) more than this share of their median is marked "noisy".
# A presentation policy, not a tolerance fitted to any machine: two variants whose figures differ
# by less than their spread cannot be ranked, and the choices the report informs (weight-only INT8
# against SmoothQuant, one batch size against the next) turn on differences of 10-30%. At 10% a
# ranking the noise could reverse is flagged instead of shown as settled.
NOISY_RELATIVE_SPREAD = 0.10


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Percentiles(BaseModel):
    """p50/p90/p99 of a set of durations, in milliseconds, with the count they are taken over."""

    model_config = ConfigDict(frozen=True)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    count: int

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Percentiles:
        p50, p90, p99 = (percentile(values, q) * 1000 for q in PERCENTILES)
        return cls(p50_ms=p50, p90_ms=p90, p99_ms=p99, count=len(values))


class Spread(BaseModel):
    """One figure over repeated runs: the median, the lowest and highest run, and how many runs."""

    model_config = ConfigDict(frozen=True)
    median: float
    low: float
    high: float
    runs: int
    # The same figure in the previous bench of the same engine, shape and host, when its range lies
    # apart from this one's (pipeline.bench.drift): the machine moved between the two benches.
    apart_from: Spread | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("a spread of no runs")
        return cls(median=percentile(values, 50), low=min(values), high=max(values), runs=len(values))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def relative_spread(self) -> float:
        """(max - min) / median: 0 for one run."""
        return (self.high - self.low) / self.median if self.median > 0 else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def noisy(self) -> bool:
        return self.relative_spread > NOISY_RELATIVE_SPREAD or self.apart_from is not None


def overlap(a: Spread, b: Spread) -> bool:
    """Whether two figures' runs share a range: if so, the runs cannot tell which is the larger."""
    return a.low <= b.high and b.low <= a.high


class RunPercentiles(BaseModel):
    """A latency's p50 and p99 as each of several runs reported them: the median run's, with the range."""

    model_config = ConfigDict(frozen=True)
    p50_ms: Spread
    p99_ms: Spread
    count: int  # samples over all runs

    @classmethod
    def of(cls, runs: Sequence[Percentiles]) -> RunPercentiles:
        return cls(
            p50_ms=Spread.of([r.p50_ms for r in runs]),
            p99_ms=Spread.of([r.p99_ms for r in runs]),
            count=sum(r.count for r in runs),
        )


@dataclass(frozen=True)
class RequestTimeline:
    """When one request was sent and when each of its output tokens arrived."""

    sent: float
    token_times: tuple[float, ...]

    def __post_init__(self) -> None:
        if any(t < self.sent for t in self.token_times):
            raise ValueError("a token arrived before its request was sent")
        if any(b < a for a, b in zip(self.token_times, self.token_times[1:], strict=False)):
            raise ValueError("token times are not in order")

    @property
    def output_tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float:
        """Time to first token: from sending to the first output token."""
        if not self.token_times:
            raise ValueError("a request with no output token has no time to first token")
        return self.token_times[0] - self.sent

    @property
    def inter_token(self) -> list[float]:
        """Gaps between consecutive output tokens (one fewer than the tokens)."""
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Decode speed after the first token; None with fewer than two tokens or no elapsed time."""
        if self.output_tokens < 2:
            return None
        span = self.token_times[-1] - self.token_times[0]
        return (self.output_tokens - 1) / span if span > 0 else None


def tokens_per_second(tokens: int, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"elapsed time must be positive, got {seconds}")
    return tokens / seconds


def ttft_percentiles(timelines: Sequence[RequestTimeline]) -> Percentiles:
    return Percentiles.of_seconds([t.ttft for t in timelines])


def itl_percentiles(timelines: Sequence[RequestTimeline]) -> Percentiles | None:
    """Pooled over every gap of every request; None when no request produced two tokens."""
    gaps = [g for t in timelines for g in t.inter_token]
    return Percentiles.of_seconds(gaps) if gaps else None


def decode_tokens_per_s_spread(timelines: Sequence[RequestTimeline]) -> Spread | None:
    """Decode speed per request (after its first token); None when no request has one."""
    speeds = [s for t in timelines if (s := t.decode_tokens_per_s) is not None]
    return Spread.of(speeds) if speeds else None


def ttft_ms_spread(timelines: Sequence[RequestTimeline]) -> Spread:
    return Spread.of([t.ttft * 1000 for t in timelines])
