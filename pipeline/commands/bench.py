"""`trtllm-pipeline bench`: latency, throughput and peak memory of every built engine (or of a
served one), and its re-run under Nsight Systems."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.bench.nsys import REPORT_NAME, find_nsys, profiled_argv
from pipeline.bench.results import BenchReport
from pipeline.bench.run import run_bench
from pipeline.bench.workload import BenchSettings
from pipeline.commands.checks import check_filters, check_work_dir
from pipeline.core.errors import StageError
from pipeline.core.reporter import Reporter
from pipeline.core.store import ArtifactStore
from pipeline.core.tools import child_environ
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig


def default_out_dir(work_dir: Path) -> Path:
    return layout.reports_dir(work_dir) / layout.BENCH


def bench(
    config: PipelineConfig,
    work_dir: Path,
    settings: BenchSettings,
    *,
    reporter: Reporter,
    out_dir: Path | None = None,
    precisions: frozenset[str] = frozenset(),
    profiles: frozenset[str] = frozenset(),
    backends: frozenset[str] = frozenset(),
    no_wait: bool = False,
) -> tuple[BenchReport, dict[str, Path]]:
    """Measure the selected engines; bench.json, bench.md and the plots go to out_dir."""
    check_filters(config, precisions, profiles, backends)
    check_work_dir(work_dir)
    store = ArtifactStore(work_dir)
    # Held so that no build replaces an engine while it is measured, nor competes for the machine.
    with store.lock(
        wait=not no_wait, on_wait=lambda p: reporter.info(f"waiting for another run holding {p}")
    ):
        return run_bench(
            config,
            store,
            settings=settings,
            out_dir=out_dir or default_out_dir(work_dir),
            reporter=reporter,
            precisions=set(precisions),
            profiles=set(profiles),
            backends=set(backends),
        )


def profile_bench(out_dir: Path, bench_args: Sequence[str], *, say: Callable[[str], None]) -> int:
    """Run the bench command with `bench_args` again under `nsys profile`; the child's exit code.
    `say` shows what is recorded and where, beside the child's own output."""
    argv = profiled_argv(find_nsys(), out_dir, bench_args)
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"recording with Nsight Systems: {shlex.join(argv)}")
    # Not core.tools.run_tool: the child is this command, whose progress, summary and one-line
    # errors belong on this terminal, and whose exit code is the answer. Its environment is still
    # child_environ(): the bench has imported TensorRT-LLM, whose MPI singleton putenv()s PMIX_*.
    code = subprocess.run(argv, check=False, env=child_environ()).returncode
    if code == 0:
        if not (out_dir / REPORT_NAME).is_file():
            raise StageError("bench", f"nsys exited 0 but wrote no {out_dir / REPORT_NAME}")
        say(f"profile: {out_dir / REPORT_NAME}")
    return code
