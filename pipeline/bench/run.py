"""`trtllm-pipeline bench`: measure every engine that is built and up to date for the config.

Bench is not a stage: timings are measurements of a machine at a moment, not
functions of the inputs, so nothing is cached; the report goes to a plain
folder. Engines are found through the executor's status, so a stale engine
(its config or inputs changed since it was built) is never measured as if it
were current.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.backends import BACKENDS, load_runner, read_engine_info
from pipeline.backends.base import Backend
from pipeline.backends.trtllm_engine.engine import ENGINE_CONFIG, read_engine_config
from pipeline.bench.harness import Clock, measure_engine
from pipeline.bench.memory import MemoryReading
from pipeline.bench.reference import plan_figures, published_estimate, ratios
from pipeline.bench.report import write_bench_report
from pipeline.bench.results import (
    BenchReport,
    GateFigures,
    LatencyResult,
    PlanFigures,
    PublishedEstimate,
    ServedPoint,
    ThroughputPoint,
    VariantResult,
)
from pipeline.bench.served import measure_server, text_prompts
from pipeline.bench.workload import BenchSettings, Workload, plan_workload
from pipeline.core.errors import InputError
from pipeline.core.reporter import Reporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import status
from pipeline.execution.results import TaskState
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig
from pipeline.gate.report import GateResult
from pipeline.planning.memory import find_architecture
from pipeline.planning.tasks import plan_tasks, select_tasks
from pipeline.runtime.limits import EngineLimits
from pipeline.stages import STAGES
from pipeline.stages.base import Stage


@dataclass(frozen=True)
class BuiltEngine:
    precision: str
    profile: str
    engine_dir: Path
    gate_dir: Path | None = None  # the gate artifact that judged this very engine, if one did

    @property
    def label(self) -> str:
        return f"{self.precision}/{self.profile}"


@dataclass(frozen=True)
class BenchInputs:
    engines: list[BuiltEngine]
    model_dir: Path | None  # the fetched model, when up to date: its config.json feeds the plan


def find_engines(
    config: PipelineConfig,
    store: ArtifactStore,
    *,
    reporter: Reporter,
    precisions: set[str] | None = None,
    profiles: set[str] | None = None,
    backends: set[str] | None = None,
    stages: Mapping[str, Stage] = STAGES,
) -> BenchInputs:
    """The build artifacts that are up to date for `config`, each with the gate that judged it (passed
    or not) when that gate is current too; warns about the engines that are not up to date."""
    if not backends and len(config.backends) > 1:
        # One backend's engines in one report: the config's first unless --backend names others.
        backends = {config.backends[0].name}
        reporter.info(f"bench: the {config.backends[0].name} backend's engines (--backend to choose another)")
    tasks = select_tasks(
        plan_tasks(config), {"build", "gate"}, precisions=precisions, profiles=profiles, backends=backends
    )
    measured = {t.backend for t in tasks if t.backend is not None}
    if len(measured) > 1:
        raise InputError(
            f"bench measures one backend at a time; these are selected: {', '.join(sorted(measured))}",
            hint="choose one with --backend",
        )
    results = status(config, store, tasks, stages)
    gates = {
        (r.task.precision, r.task.profile): r.path
        for r in results
        if r.task.stage == "gate" and r.state in (TaskState.up_to_date, TaskState.rejected)
    }
    engines, skipped = [], []
    model_dir = None
    for result in results:
        task = result.task
        if task.stage == "fetch" and result.state is TaskState.up_to_date and result.path is not None:
            model_dir = layout.model_dir(result.path)
        if task.stage != "build":
            continue
        assert task.precision is not None and task.profile is not None
        if result.state is TaskState.up_to_date and result.path is not None:
            gate_dir = gates.get((task.precision, task.profile))
            engines.append(
                BuiltEngine(task.precision, task.profile, layout.engine_dir(result.path), gate_dir)
            )
        else:
            why = f" ({result.reason})" if result.reason else ""
            skipped.append(f"the {task.precision}/{task.profile} engine is {result.state.value}{why}")
    if not engines:
        raise InputError(
            f"no engine of {config.model.name} for {config.target.gpu} is built and up to date",
            hint="run `trtllm-pipeline build` (with the same --config and --work-dir) first",
        )
    for line in skipped:
        reporter.warn(f"{line}: not benchmarked")
    return BenchInputs(engines, model_dir)


@dataclass(frozen=True)
class EngineFacts:
    """What bench reads from an engine's config.json without loading the engine."""

    pretrained_config: dict[str, Any]
    limits: EngineLimits


def read_engine_facts(engine_dir: Path) -> EngineFacts:
    engine_config = read_engine_config(engine_dir)
    limits = EngineLimits.of_engine(engine_config, source=engine_dir / ENGINE_CONFIG)
    return EngineFacts(engine_config["pretrained_config"], limits)


def gate_figures(gate_dir: Path | None) -> GateFigures | None:
    if gate_dir is None:
        return None
    path = gate_dir / layout.GATE_JSON
    try:
        record = GateResult.model_validate_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the gate's record: {exc}", path=path) from None
    return GateFigures(
        verdict=record.verdict,
        checks=tuple(record.checks),
        source=f"{path}: the gate of this engine (current for its config and inputs)",
    )


def host_facts(backend: Backend) -> dict[str, str]:
    return {
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        **backend.bench_host_facts(),
    }


@dataclass(frozen=True)
class Measured:
    workload: Workload
    latency: LatencyResult
    throughput: tuple[ThroughputPoint, ...]
    served: tuple[ServedPoint, ...]
    memory: MemoryReading | None


def measure_in_process(
    engine: BuiltEngine,
    settings: BenchSettings,
    *,
    backend: Backend,
    reporter: Reporter,
    clock: Clock,
) -> Measured:
    """Load the engine in this process and drive it through the workload."""
    runner = load_runner(engine.engine_dir)
    try:
        workload = plan_workload(runner.limits, settings)
        _tell_adjustments(engine, workload, reporter)
        probe = backend.memory_probe(served=False)
        if probe is not None:
            probe.start()
        timings = measure_engine(
            runner, workload, seed=settings.seed, reporter=reporter, label=engine.label, clock=clock
        )
        memory = probe.stop() if probe is not None else None
    finally:
        del runner
        gc.collect()  # free one engine's memory before the next loads
    return Measured(workload, timings.latency, timings.throughput, (), memory)


def measure_through_server(
    engine: BuiltEngine,
    settings: BenchSettings,
    *,
    facts: EngineFacts,
    model_dir: Path | None,
    backend: Backend,
    reporter: Reporter,
    clock: Clock,
) -> Measured:
    """Measure the Triton server at settings.server_url, which must be serving this engine."""
    assert settings.server_url is not None
    if model_dir is None:
        raise InputError(
            "served mode writes prompts with the model's tokenizer, and the fetched model is not up to date",
            hint="run `trtllm-pipeline fetch` first",
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    workload = plan_workload(facts.limits, settings)
    _tell_adjustments(engine, workload, reporter)
    vocab_size = int(facts.pretrained_config["vocab_size"])

    def prompts(count: int, seed: int) -> list[str]:
        return text_prompts(tokenizer, count, workload.latency.input_len, vocab_size, settings.seed + seed)

    probe = backend.memory_probe(served=True)
    if probe is not None:
        probe.start()
    latency, served = measure_server(
        settings.server_url, workload, prompts, reporter=reporter, label=engine.label, clock=clock
    )
    memory = probe.stop() if probe is not None else None
    return Measured(workload, latency, (), served, memory)


def _tell_adjustments(engine: BuiltEngine, workload: Workload, reporter: Reporter) -> None:
    for note in workload.adjustments:
        reporter.info(f"{engine.label}: {note}")


def variant_result(
    engine: BuiltEngine,
    measured: Measured,
    *,
    limits: EngineLimits,
    plan: PlanFigures,
    published: PublishedEstimate,
) -> VariantResult:
    return VariantResult(
        precision=engine.precision,
        profile=engine.profile,
        engine_dir=str(engine.engine_dir),
        limits=asdict(limits),
        adjustments=measured.workload.adjustments,
        latency=measured.latency,
        throughput=measured.throughput,
        served=measured.served,
        memory=measured.memory,
        plan=plan,
        gate=gate_figures(engine.gate_dir),
        ratios=ratios(
            decode_tokens_per_s=measured.latency.decode_tokens_per_s,
            throughput=measured.throughput,
            memory=measured.memory,
            plan=plan,
            published=published,
            precision=engine.precision,
        ),
    )


def run_bench(
    config: PipelineConfig,
    store: ArtifactStore,
    *,
    settings: BenchSettings,
    out_dir: Path,
    reporter: Reporter,
    precisions: set[str] | None = None,
    profiles: set[str] | None = None,
    backends: set[str] | None = None,
    clock: Clock = time.perf_counter,
    stages: Mapping[str, Stage] = STAGES,
) -> tuple[BenchReport, dict[str, Path]]:
    """Measure every up-to-date engine of one backend, write bench.json, bench.md and the plots into out_dir."""
    found = find_engines(
        config,
        store,
        reporter=reporter,
        precisions=precisions,
        profiles=profiles,
        backends=backends,
        stages=stages,
    )
    if settings.server_url is not None and len(found.engines) != 1:
        raise InputError(
            f"--server-url measures the one engine the server publishes; {len(found.engines)} are selected",
            hint="choose it with --precision and --profile",
        )
    backend = BACKENDS[read_engine_info(found.engines[0].engine_dir).backend]
    arch = find_architecture(config, found.model_dir)
    facts = {e: read_engine_facts(e.engine_dir) for e in found.engines}
    # Every engine of one config holds the same model: the first one's config says which.
    published = published_estimate(
        pretrained_config=facts[found.engines[0]].pretrained_config, target=config.target.gpu
    )
    variants = []
    for engine in found.engines:
        if settings.server_url is not None:
            measured = measure_through_server(
                engine,
                settings,
                facts=facts[engine],
                model_dir=found.model_dir,
                backend=backend,
                reporter=reporter,
                clock=clock,
            )
        else:
            measured = measure_in_process(
                engine,
                settings,
                backend=backend,
                reporter=reporter,
                clock=clock,
            )
        plan = plan_figures(config, arch, engine.precision, engine.profile)
        variants.append(
            variant_result(engine, measured, limits=facts[engine].limits, plan=plan, published=published)
        )
    report = BenchReport(
        created_at=datetime.now(timezone.utc),
        model=config.model.name,
        target=config.target.gpu,
        runtime=backend.bench_runtime(),
        host=host_facts(backend),
        settings=settings,
        variants=tuple(variants),
        published=published,
    )
    return report, write_bench_report(report, out_dir)
