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


@dataclass
class SmokeReport:
    repository: Path
    startup_s: float = 0.0
    checks: list[SmokeCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[SmokeCheck]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict:
        return {
            "repository": str(self.repository),
            "version": self.repository.resolve().name,
            "startup_s": round(self.startup_s, 2),
            "ok": self.ok,
            "checks": [{**asdict(c), "ok": c.ok} for c in self.checks],
        }
