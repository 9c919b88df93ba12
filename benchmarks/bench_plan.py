"""Plan and build speed: `plan` goal < 0.3 s; an unchanged `build` re-run does no work.

1. The plan's arithmetic in process (the real job, every target), then `trtllm-pipeline plan`
   for the real job as a command (best of 5, start-up included).
2. `trtllm-pipeline build --precision int8_wo` on the embedded tiny default in a temp work dir
   (fetch, calibrate and two reference-backend builds), then the same command again: it must run
   nothing (every task up to date), and its wall time is printed.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(*args: str, cwd: Path = REPO_ROOT) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s, result) of one `trtllm-pipeline` command; CPU time is steadier on a busy machine."""
    t0, cpu0 = time.perf_counter(), _cpu_of_children()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    return time.perf_counter() - t0, _cpu_of_children() - cpu0, done


def bench_plan() -> None:
    from pipeline.backends import backend_of, targets_of
    from pipeline.facts.config import load_config
    from pipeline.planning.memory import find_architecture, plan_config

    config = load_config(REPO_ROOT / "pipeline.toml")
    arch = find_architecture(config)
    targets = tuple(t.name for t in targets_of(backend_of(config)))  # every GPU, for its engines
    rounds = 200
    t0 = time.perf_counter()
    for _ in range(rounds):
        plans = plan_config(config, arch, targets)
    per_call = (time.perf_counter() - t0) / rounds
    print(f"plan arithmetic: {len(plans)} plans in {per_call * 1e3:.2f} ms (in process)")
    walls, cpus = [], []
    for _ in range(5):
        wall, cpu, done = _cli("plan", "--config", "pipeline.toml", "--json")
        if done.returncode != 0:
            raise RuntimeError(f"plan exited {done.returncode}: {done.stderr.strip()}")
        walls.append(wall)
        cpus.append(cpu)
    print(
        f"trtllm-pipeline plan (real job, start-up included): best {min(walls):.3f}s wall, "
        f"{min(cpus):.3f}s CPU of 5 (goal < 0.3s)"
    )


def _tasks(work: Path) -> list[dict]:
    # The run report, not stdout: progress lines go to stdout too.
    return json.loads((work / "reports" / "run.json").read_text())["tasks"]


def bench_build_rerun() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        work = Path(tmp) / "work"
        args = ("build", "--precision", "int8_wo", "--work-dir", str(work))
        first, _, done = _cli(*args)
        if done.returncode != 0:
            raise RuntimeError(f"first build exited {done.returncode}: {done.stderr.strip()[-500:]}")
        engines = [t for t in _tasks(work) if t["stage"] == "build" and t["state"] == "ran"]
        print(f"first build (tiny default: fetch, calibrate, {len(engines)} reference engines): {first:.1f}s")
        again, again_cpu, done = _cli(*args)
        tasks = _tasks(work)
        redone = [t["task"] for t in tasks if t["state"] != "up to date"]
        verdict = "OK" if not redone and done.returncode == 0 else f"FAILED: {redone}"
        print(
            f"unchanged build re-run: {again:.2f}s wall, {again_cpu:.2f}s CPU, {len(tasks)} tasks, "
            f"reran {len(redone)} ({verdict})"
        )
        if redone or done.returncode != 0:
            raise RuntimeError(f"an unchanged re-run ran {redone} (exit {done.returncode})")


def main() -> None:
    bench_plan()
    bench_build_rerun()


if __name__ == "__main__":
    main()
