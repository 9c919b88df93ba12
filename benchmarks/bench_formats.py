"""Every format side by side: tokens/s, peak memory and gate figures beside the plan, in one table and one plot.

Runs the pipeline up to the gate for every precision the embedded tiny default
lists (cpu-reference), then `bench` over every engine. Artifacts stay in
work/bench-formats (a rerun reuses what is up to date; bench always measures
again); the report goes to work/bench-formats/reports/bench/. On a GPU host,
`trtllm-pipeline run` then `bench` with the real config print the same table
against each format's plan ceiling.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = REPO_ROOT / "work" / "bench-formats"


def main() -> None:
    from pipeline.bench.report import formats_table, variant_label
    from pipeline.bench.run import run_bench
    from pipeline.bench.workload import BenchSettings
    from pipeline.config import load_config
    from pipeline.executor import execute
    from pipeline.reporting import RecordingReporter
    from pipeline.store import ArtifactStore
    from pipeline.tasks import plan_tasks, select_tasks

    os.chdir(REPO_ROOT)  # the embedded default's data paths resolve here
    config = load_config(None)
    precisions = ", ".join(p.value for p in config.quantization.precisions)
    print(f"{config.model.name} on {config.target.gpu}: precisions {precisions}; work dir {WORK_DIR}")
    store = ArtifactStore(WORK_DIR)
    t0 = time.perf_counter()
    run = execute(config, store, select_tasks(plan_tasks(config), {"gate"}), reporter=RecordingReporter())
    if run.error is not None:
        raise run.error
    ran = sum(r.state.value == "ran" for r in run.results)
    print(
        f"fetch/calibrate/build/gate: {ran} of {len(run.results)} tasks ran, {time.perf_counter() - t0:.1f}s"
    )
    t0 = time.perf_counter()
    report, paths = run_bench(
        config,
        store,
        settings=BenchSettings(),
        out_dir=WORK_DIR / "reports" / "bench",
        reporter=RecordingReporter(),
    )
    print(f"bench: {len(report.variants)} engines in {time.perf_counter() - t0:.1f}s ({report.runtime})")
    print("\n".join(formats_table(report)))
    for v in report.variants:
        if v.memory is not None and v.memory.gpu_utilization is not None:
            u = v.memory.gpu_utilization
            print(f"{variant_label(v)}: GPU utilization {u.mean_percent:.0f}% mean, {u.max_percent}% max")
    print(f"report: {paths['markdown']}; plot: {paths['formats_plot']}")
