"""Every format side by side: tokens/s, peak memory and gate figures beside the plan, in one table, with the plots.

Runs the pipeline up to the gate for every format of pipeline/facts/formats.py (each
precision with an FP16 KV cache, then the INT8-capable ones with an INT8 KV
cache) on the embedded tiny default's throughput profile (the reference backend), then
`bench` over those engines. Artifacts stay in work/bench-formats/kv-<dtype>
(a rerun reuses what is up to date; bench always measures again); each
report goes to its work dir's reports/bench/. On a GPU host,
`trtllm-pipeline run` then `bench` with the real config print the same table
against each format's plan ceiling.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = REPO_ROOT / "work" / "bench-formats"


# The profile every format is measured on: batches up to 8, so best-batch throughput means something.
PROFILE = "throughput"


def main() -> None:
    from pipeline.backends import backend_of
    from pipeline.facts.config import load_config
    from pipeline.facts.formats import FORMATS
    from pipeline.facts.targets import TARGETS

    os.chdir(REPO_ROOT)  # the embedded default's data paths resolve here
    base = load_config(None)
    backend, target = backend_of(base), TARGETS[base.target.gpu]
    for kv in ("fp16", "int8"):
        precisions = tuple(p for p in FORMATS if backend.format_problem(p, kv, target) is None)
        if kv != "fp16":  # a KV cache format of their own: the INT8 cache applies to the integer formats
            precisions = tuple(p for p in precisions if FORMATS[p].quant_algo and FORMATS[p].kv_cache is None)
        quantization = base.quantization.model_copy(update={"precisions": precisions, "kv_cache_dtype": kv})
        _bench_formats(base.model_copy(update={"quantization": quantization}), WORK_DIR / f"kv-{kv}")


def _bench_formats(config, work_dir: Path) -> None:
    from pipeline.bench.report import formats_table, variant_label
    from pipeline.bench.run import run_bench
    from pipeline.bench.workload import BenchSettings
    from pipeline.core.reporter import RecordingReporter
    from pipeline.core.store import ArtifactStore
    from pipeline.execution.driver import execute
    from pipeline.planning.tasks import plan_tasks, select_tasks

    precisions = ", ".join(p.value for p in config.quantization.precisions)
    kv = config.quantization.kv_cache_dtype
    print(f"\n{config.model.name} on {config.target.gpu}, {kv} KV cache: {precisions}; work dir {work_dir}")
    store = ArtifactStore(work_dir)
    t0 = time.perf_counter()
    tasks = select_tasks(plan_tasks(config), {"gate"}, profiles={PROFILE})
    run = execute(config, store, tasks, reporter=RecordingReporter())
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
        out_dir=work_dir / "reports" / "bench",
        reporter=RecordingReporter(),
        profiles={PROFILE},
    )
    print(f"bench: {len(report.variants)} engines in {time.perf_counter() - t0:.1f}s ({report.runtime})")
    print("\n".join(formats_table(report)))
    for v in report.variants:
        if v.memory is not None and v.memory.gpu_utilization is not None:
            u = v.memory.gpu_utilization
            print(f"{variant_label(v)}: GPU utilization {u.mean_percent:.0f}% mean, {u.max_percent}% max")
    print(f"report: {paths['markdown']}; plots beside it (gate checks: {paths['gate_plot']})")
