"""The demo's builds and gates, local executor vs Ray with 2 worker nodes: wall time and the ratio.

The embedded tiny default (2 precisions x 2 profiles on the CPU, reference backend): fetch and calibrate run once
(work/bench-executor, reused), then every build, gate engine and gate is forced to run again, first one
at a time in this process, then on a local Ray cluster (ray.cluster_utils.Cluster: a head that runs
nothing and two nodes of one CPU each). Both runs must give the same keys. The ratio is bounded by the
machine: on 2 cores, 2 workers can at best halve the wall time. Ray runs twice: with cold workers (each
imports torch and the stages on its first task) and warm ones, as a long-lived cluster has them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = REPO_ROOT / "work" / "bench-executor"
FORCED = frozenset({"build", "gate_engine", "gate"})
WORKERS = 2


def main() -> None:
    from ray.cluster_utils import Cluster

    from pipeline.core.reporter import RecordingReporter
    from pipeline.core.store import ArtifactStore
    from pipeline.execution import ray_cluster
    from pipeline.execution.driver import execute
    from pipeline.facts.config import load_config
    from pipeline.planning.tasks import plan_tasks, select_tasks

    os.chdir(REPO_ROOT)  # the embedded default's data paths resolve here
    config = load_config(None)
    store = ArtifactStore(WORK_DIR)
    tasks = select_tasks(plan_tasks(config), {"gate"})
    prepared = execute(config, store, select_tasks(tasks, {"calibrate"}), reporter=RecordingReporter())
    if prepared.error is not None:
        raise prepared.error
    timed = [t for t in tasks if t.stage in FORCED]
    print(
        f"{config.model.name} on {config.target.gpu}: {len(timed)} tasks ({', '.join(sorted(FORCED))}), {os.cpu_count()} cores"
    )

    def run(runner=None):
        t0 = time.perf_counter()
        report = execute(
            config, store, tasks, reporter=RecordingReporter(), force_stages=FORCED, runner=runner
        )
        if report.error is not None:
            raise report.error
        work = sum(r.duration_s for r in report.results if r.task.stage in FORCED)
        return time.perf_counter() - t0, work, {r.task: r.key for r in report.results}

    local_s, local_work, local_keys = run()
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(WORKERS):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray_cluster.connect(cluster.address)
        ray_cluster.prove_shared_storage(store.work_dir.absolute())  # also starts a worker on each node
        startup_s = time.perf_counter() - t0
        cold = run(ray_cluster.RayTaskRunner())  # each worker imports torch and the stages first
        warm = run(ray_cluster.RayTaskRunner())
    finally:
        ray_cluster.disconnect()
        cluster.shutdown()
    print(f"{'executor':<30}{'wall s':>8}{'task s':>8}{'local/ray':>10}  keys")
    print(f"{'local (1 at a time)':<30}{local_s:>8.1f}{local_work:>8.1f}")
    for label, (ray_s, ray_work, ray_keys) in (("cold", cold), ("warm", warm)):
        same = "same" if ray_keys == local_keys else "DIFFER"
        name = f"ray ({WORKERS} workers, {label})"
        print(f"{name:<30}{ray_s:>8.1f}{ray_work:>8.1f}{local_s / ray_s:>9.2f}x  {same}")
    print(f"(cluster start {startup_s:.1f}s, not counted; task s: the tasks' own durations, summed)")
