"""What a smoke check found: each route's answer against the reference's, per served version. Both
consumers' smoke checks (the engine repository's, pipeline.serving.smoke, and a PyTorch-backend
release's, pipeline.serving.pytorch.smoke) report in it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SmokeCheck:
    route: str  # <model>/<endpoint>
    prompt: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.got == self.expected


@dataclass(frozen=True)
class TaskComparison:
    """`smoke --tasks`: one gate task's score on the served deployment against the gated score."""

    task: str
    metric: str
    samples: int
    gated: float
    allowed: float  # the largest |served - gated| that passes (pipeline.serving.task_check)
    served: float | None  # None: not scored (note says why)
    note: str = ""

    @property
    def ok(self) -> bool:
        # Both scores are float64 means of `samples` items in [0, 1]: each rounds by less than
        # samples x 2^-52, so one item's flip (allowed 1/samples) is not lost to rounding.
        slack = self.samples * 2.0**-52
        return self.served is None or abs(self.served - self.gated) <= self.allowed + slack

    def line(self) -> str:
        """One line for a failure: the task, both scores, and what to do."""
        return (
            f"task '{self.task}' ({self.metric}, {self.samples} items) scores {self.served:.4f} served against "
            f"{self.gated:.4f} gated (allowed ± {self.allowed:.4f}): the deployment does not serve what was gated"
        )


@dataclass
class SmokeReport:
    repository: Path
    startup_s: float = 0.0
    checks: list[SmokeCheck] = field(default_factory=list)
    tasks: list[TaskComparison] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks) and all(t.ok for t in self.tasks)

    @property
    def failures(self) -> list[SmokeCheck]:
        return [c for c in self.checks if not c.ok]

    @property
    def task_failures(self) -> list[TaskComparison]:
        return [t for t in self.tasks if not t.ok]

    def to_json(self) -> dict:
        return {
            "repository": str(self.repository),
            "version": self.repository.resolve().name,
            "startup_s": round(self.startup_s, 2),
            "ok": self.ok,
            "checks": [{**asdict(c), "ok": c.ok} for c in self.checks],
            "tasks": [{**asdict(t), "ok": t.ok} for t in self.tasks],
        }
