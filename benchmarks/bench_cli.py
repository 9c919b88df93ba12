"""CLI start-up: `trtllm-pipeline --help` must stay instant (goal < 0.5 s)."""

from __future__ import annotations

import subprocess
import sys
import time


def main() -> None:
    timings = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "--help"], check=True, capture_output=True)
        timings.append(time.perf_counter() - t0)
    best = min(timings)
    print(f"trtllm-pipeline --help: best {best:.3f}s of 5, median {sorted(timings)[2]:.3f}s (goal < 0.5s)")
