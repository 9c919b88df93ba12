"""Stand-in stages for executor and store tests: they write small files and count runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pipeline.stages.base import Stage, StageOutcome

RUNS: list[str] = []
CRASH_ONCE_ENV = "FAKE_STAGE_CRASH_ONCE"
SLOW_ENV = "FAKE_STAGE_SLOW"  # <stage>=<seconds>: that stage's tasks take this long


class StandIn(Stage):
    """A stage made of a run function and a config section, for tests that replace real stages."""

    def __init__(self, name, run, section=lambda config, task: {}, *, version=1, tools=()):
        self.name, self.version, self.tools = name, version, tools
        self._run, self._section = run, section

    def config_section(self, config, task):
        return self._section(config, task)

    def run(self, ctx):
        return self._run(ctx)


def make_stage(
    name: str, section, *, ok=lambda ctx: True, crash_env: str | None = None, varying: bool = False
):
    def run(ctx):
        RUNS.append(ctx.task.id)
        # varying: every run writes other bytes (as a non-deterministic build would)
        (ctx.out_dir / "part-1.bin").write_bytes(b"x" * 1000 + (str(len(RUNS)).encode() if varying else b""))
        if crash_env and os.environ.get(crash_env) == ctx.task.id:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash mid-stage, after some output exists
        stage, _, seconds = os.environ.get(SLOW_ENV, "").partition("=")
        if stage == ctx.task.stage:
            time.sleep(float(seconds))
        once = os.environ.get(CRASH_ONCE_ENV, "")
        if once.startswith(f"{ctx.task.id}="):  # <task id>=<marker>: crash the first time only
            marker = Path(once.split("=", 1)[1])
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
        upstream = ",".join(sorted(a.key for a in ctx.inputs.values()))
        (ctx.out_dir / "result.txt").write_text(f"{ctx.task.id} from {upstream}\n")
        return StageOutcome(summary=f"made {ctx.task.id}", record={"n": len(RUNS)}, ok=ok(ctx))

    return StandIn(name, run, section, tools=("pydantic",))


def fake_stages(
    gate_ok=lambda ctx: True,
    crash_env: str | None = "FAKE_STAGE_CRASH",
    varying: frozenset[str] = frozenset(),
):
    return {
        "fetch": make_stage("fetch", lambda c, t: c.model.model_dump(mode="json"), crash_env=crash_env),
        "calibrate": make_stage(
            "calibrate", lambda c, t: c.calibration.model_dump(mode="json"), crash_env=crash_env
        ),
        "build": make_stage(
            "build",
            lambda c, t: c.profile(t.profile).model_dump(mode="json"),
            crash_env=crash_env,
            varying="build" in varying,
        ),
        "gate_engine": make_stage(
            "gate_engine", lambda c, t: c.profile(t.profile).model_dump(mode="json"), crash_env=crash_env
        ),
        "gate": make_stage(
            "gate", lambda c, t: c.gate.model_dump(mode="json"), ok=gate_ok, crash_env=crash_env
        ),
        "publish": make_stage("publish", lambda c, t: c.publish.model_dump(mode="json"), crash_env=crash_env),
    }
