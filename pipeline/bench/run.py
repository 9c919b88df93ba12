"""`trtllm-pipeline bench`: measure every engine that is built and up to date for the config, of every
selected backend, in one report (each row names its backend, and the runtime and tool that measured it).

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.backends import engine_backend, load_runner
from pipeline.backends.base import Backend
from pipeline.bench.aiperf import Target, find_aiperf, openai_target, triton_target
from pipeline.bench.drift import against_previous
from pipeline.bench.files import read_previous, write_bench_report
from pipeline.bench.harness import Clock, measure_engine
from pipeline.bench.machine import GpuClocks, machine_state, snapshot
from pipeline.bench.memory import MemoryReading
from pipeline.bench.reference import plan_figures, published_estimate, ratios
from pipeline.bench.results import (
    BenchReport,
    GateFigures,
    LatencyResult,
    PeerResult,
    PlanFigures,
    PublishedEstimate,
    ServedPoint,
    ThroughputPoint,
    VariantResult,
)
from pipeline.bench.served import LoadPlan, latency_through, load_plan, sweep
from pipeline.bench.workload import BenchSettings, Workload, plan_workload
from pipeline.core.errors import InputError, IntegrityError
from pipeline.core.manifest import MANIFEST_NAME, Manifest
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
    backend: str  # the config's [[backends]] name
    precision: str
    profile: str
    engine_dir: Path
    gate_dir: Path | None = None  # the gate artifact that judged this very engine, if one did

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}/{self.profile}"

    @property
    def folder(self) -> Path:
        """Where its files go under a folder of bench's (aiperf's exports, the served views)."""
        return Path(self.backend, self.precision, self.profile)

    @property
    def filters(self) -> str:
        """The command-line options that select this variant."""
        return f"--backend {self.backend} --precision {self.precision} --profile {self.profile}"


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
    """The build artifacts of every selected backend that are up to date for `config`, each with the
    gate that judged it (passed or not) when that gate is current too; warns about the engines that are
    not up to date."""
    tasks = select_tasks(
        plan_tasks(config), {"build", "gate"}, precisions=precisions, profiles=profiles, backends=backends
    )
    results = status(config, store, tasks, stages)
    gates = {
        (r.task.backend, r.task.precision, r.task.profile): r.path
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
        assert task.backend is not None and task.precision is not None and task.profile is not None
        if result.state is TaskState.up_to_date and result.path is not None:
            gate_dir = gates.get((task.backend, task.precision, task.profile))
            engines.append(
                BuiltEngine(
                    task.backend, task.precision, task.profile, layout.engine_dir(result.path), gate_dir
                )
            )
        else:
            why = f" ({result.reason})" if result.reason else ""
            skipped.append(
                f"the {task.backend}/{task.precision}/{task.profile} engine is {result.state.value}{why}"
            )
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
    """What bench reads about a build without loading it, from the backend that built it."""

    backend: Backend  # the runtime that built it, and runs it here
    pretrained_config: dict[str, Any]
    limits: EngineLimits


def read_engine_facts(engine_dir: Path) -> EngineFacts:
    backend, _ = engine_backend(engine_dir)
    return EngineFacts(backend, backend.model_config(engine_dir), backend.limits(engine_dir))


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


def host_facts(backends: list[Backend]) -> dict[str, str]:
    facts = {
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
    }
    for backend in backends:
        facts |= backend.bench_host_facts()
    return facts


def gpu_clocks(backends: list[Backend]) -> Callable[[], tuple[GpuClocks, ...]]:
    """The clocks of the GPUs the backends run on: those of one target run on the same GPUs, so the
    first one that reads any answers."""
    return lambda: next((clocks for b in backends if (clocks := b.bench_gpu_clocks())), ())


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
            runner,
            workload,
            seed=settings.seed,
            reporter=reporter,
            label=engine.label,
            runtime=backend.bench_runtime(),
            clock=clock,
        )
        memory = probe.stop() if probe is not None else None
    finally:
        del runner
        gc.collect()  # free one engine's memory before the next loads
    return Measured(workload, timings.latency, timings.throughput, (), memory)


@dataclass(frozen=True)
class ServedLoad:
    """What served load needs, found before anything is measured: aiperf, the tokenizer, the folders."""

    aiperf: Path
    tokenizer: Any
    tokenizer_dir: Path
    out_dir: Path  # aiperf's artifacts (exports, logs) per endpoint
    serve_dir: Path  # the serving views and tritonserver logs of --served

    def plan(
        self, engine: BuiltEngine, workload: Workload, facts: EngineFacts, settings: BenchSettings
    ) -> LoadPlan:
        return load_plan(
            workload,
            self.tokenizer,
            tokenizer_dir=self.tokenizer_dir,
            vocab_size=int(facts.pretrained_config["vocab_size"]),
            seed=settings.seed,
            warmup_runs=settings.warmup_runs,
            path=self.out_dir / engine.folder / "prompts.jsonl",
        )


def served_load(
    aiperf: Path | None, model_dir: Path | None, *, out_dir: Path, work_dir: Path
) -> ServedLoad | None:
    if aiperf is None:
        return None
    if model_dir is None:
        raise InputError(
            "served load writes prompts with the model's tokenizer, and the fetched model is not up to date",
            hint="run `trtllm-pipeline fetch` first",
        )
    from transformers import AutoTokenizer

    return ServedLoad(
        aiperf=aiperf,
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        tokenizer_dir=model_dir,
        out_dir=out_dir / "aiperf",
        serve_dir=work_dir / "bench-serve",
    )


def measure_through_server(
    engine: BuiltEngine,
    settings: BenchSettings,
    *,
    facts: EngineFacts,
    load: ServedLoad,
    reporter: Reporter,
) -> tuple[Measured, LoadPlan]:
    """Measure the Triton server at settings.server_url, which must be serving this engine: batch 1 and
    every client count through aiperf."""
    assert settings.server_url is not None
    workload = plan_workload(facts.limits, settings)
    _tell_adjustments(engine, workload, reporter)
    plan = load.plan(engine, workload, facts, settings)
    target = triton_target(engine.label, settings.server_url)
    out_dir = load.out_dir / engine.folder
    probe = facts.backend.memory_probe(served=True)
    if probe is not None:
        probe.start()
    latency = latency_through(load.aiperf, target, plan, workload, out_dir=out_dir)
    served = sweep(load.aiperf, target, plan, out_dir=out_dir, reporter=reporter)
    memory = probe.stop() if probe is not None else None
    return Measured(workload, latency, (), served, memory), plan


def require_published_engine(repository: Path, engine: BuiltEngine) -> None:
    """The published version must hold the very engine that was built (by the hashes both manifests list)."""
    from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest

    release = ReleaseManifest.model_validate_json((repository / RELEASE_MANIFEST).read_text())
    build = Manifest.model_validate_json((engine.engine_dir.parent / MANIFEST_NAME).read_text())
    prefix = f"{layout.ENGINE}/"
    built = {f.path.removeprefix(prefix): f.sha256 for f in build.files if f.path.startswith(prefix)}
    engine_prefix = f"{release.engine.path}/"
    published = {
        f.path.removeprefix(engine_prefix): f.sha256
        for f in release.files
        if f.path.startswith(engine_prefix)
    }
    if release.serving.llmapi_repository is None:
        same = built == published
    else:
        # The release's checkpoint folder holds the tokenizer too: trtllm-serve reads it from there.
        same = layout.released_checkpoint(built).items() <= published.items()
    if not same:
        raise IntegrityError(
            f"{repository.resolve()}: publishes another {engine.label} engine than the one built now",
            hint=f"run `trtllm-pipeline publish {engine.filters}`",
        )


def servable_releases(config: PipelineConfig, engines: list[BuiltEngine]) -> dict[BuiltEngine, Path]:
    """Each engine's published version, checked before anything is measured: intact, servable here and
    holding that very engine."""
    from pipeline.serving.smoke import published_repository, require_intact, require_servable_here

    releases = {}
    for engine in engines:
        repository = published_repository(config, engine.backend, engine.precision, engine.profile)
        require_intact(repository, "refusing to serve it")
        require_servable_here(repository)
        require_published_engine(repository, engine)
        releases[engine] = repository
    return releases


@contextmanager
def serving(engine: BuiltEngine, repository: Path, work: Path) -> Iterator[tuple[Target, Path]]:
    """The published version served here as its users serve it, the endpoint aiperf drives, and the
    server's log: an engine repository on the bundled tritonserver (its ensemble's generate_stream), a
    PyTorch-backend release through its own trtllm-serve command (OpenAI /v1/completions)."""
    from pipeline.serving.pytorch.smoke import OpenAIServer
    from pipeline.serving.server import TritonServer
    from pipeline.serving.smoke import is_pytorch_release, serving_view

    view = serving_view(repository, work)
    if is_pytorch_release(repository):
        with OpenAIServer(view, work_dir=work) as server:
            yield openai_target(server.url), server.log_path
    else:
        with TritonServer(view, work_dir=work) as server:
            yield triton_target(engine.label, server.url), server.log_path


def serve_published(
    engine: BuiltEngine,
    repository: Path,
    plan: LoadPlan,
    *,
    load: ServedLoad,
    reporter: Reporter,
) -> tuple[ServedPoint, ...]:
    """The variant's published version served here, every client count through aiperf."""
    from pipeline.serving.smoke import require_intact

    with serving(engine, repository, load.serve_dir / engine.folder) as (target, log):
        reporter.info(f"{engine.label}: {repository.resolve()} served at {target.url} (log: {log})")
        points = sweep(load.aiperf, target, plan, out_dir=load.out_dir / engine.folder, reporter=reporter)
    require_intact(repository, "the server wrote into it")
    return points


def measure_peers(
    settings: BenchSettings, plans: dict[str, LoadPlan], *, load: ServedLoad, reporter: Reporter
) -> tuple[PeerResult, ...]:
    """Each --compare URL under the served workload of the variant with the most client counts."""
    if not settings.compare:
        return ()
    label, plan = max(plans.items(), key=lambda item: len(item[1].cases))
    peers = []
    for index, url in enumerate(settings.compare):
        target = openai_target(url)
        reporter.info(f"peer {target.name} (model {target.model}): the served workload of {label}")
        points = sweep(
            load.aiperf, target, plan, out_dir=load.out_dir / "peers" / str(index), reporter=reporter
        )
        peers.append(PeerResult(name=target.name, model=target.model, workload_of=label, served=points))
    return tuple(peers)


def _tell_adjustments(engine: BuiltEngine, workload: Workload, reporter: Reporter) -> None:
    for note in workload.adjustments:
        reporter.info(f"{engine.label}: {note}")


def variant_result(
    engine: BuiltEngine,
    measured: Measured,
    *,
    facts: EngineFacts,
    plan: PlanFigures,
    published: PublishedEstimate,
) -> VariantResult:
    return VariantResult(
        backend=engine.backend,
        precision=engine.precision,
        profile=engine.profile,
        runtime=facts.backend.bench_runtime(),
        engine_dir=str(engine.engine_dir),
        limits=asdict(facts.limits),
        adjustments=measured.workload.adjustments,
        latency=measured.latency,
        throughput=measured.throughput,
        served=measured.served,
        memory=measured.memory,
        plan=plan,
        gate=gate_figures(engine.gate_dir),
        ratios=ratios(
            decode_tokens_per_s=measured.latency.decode_tokens_per_s.median,
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
    """Measure every up-to-date engine of the selected backends, write bench.json, bench.md and the plots
    into out_dir."""
    if settings.server_url is not None and settings.served:
        raise InputError(
            "--served starts a server per published variant; --server-url measures one you started",
            hint="give one of the two",
        )
    # Before anything is measured: a missing aiperf is one line on how to install it, not a late failure.
    aiperf = find_aiperf() if settings.wants_served_load else None
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
            hint="choose it with --backend, --precision and --profile",
        )
    releases = servable_releases(config, found.engines) if settings.served else {}
    arch = find_architecture(config, found.model_dir)
    facts = {e: read_engine_facts(e.engine_dir) for e in found.engines}
    backends = list(dict.fromkeys(f.backend for f in facts.values()))
    # Every engine of one config holds the same model: the first one's config says which.
    published = published_estimate(
        pretrained_config=facts[found.engines[0]].pretrained_config, target=config.target.gpu
    )
    load = served_load(aiperf, found.model_dir, out_dir=out_dir, work_dir=store.root.parent)
    previous = read_previous(out_dir, reporter)
    variants = []
    plans: dict[str, LoadPlan] = {}
    before = snapshot(gpu_clocks(backends))
    for engine in found.engines:
        if settings.server_url is not None:
            assert load is not None
            measured, plans[engine.label] = measure_through_server(
                engine, settings, facts=facts[engine], load=load, reporter=reporter
            )
        else:
            measured = measure_in_process(
                engine, settings, backend=facts[engine].backend, reporter=reporter, clock=clock
            )
            if load is not None:
                plans[engine.label] = load.plan(engine, measured.workload, facts[engine], settings)
            if settings.served:
                assert load is not None
                served = serve_published(
                    engine, releases[engine], plans[engine.label], load=load, reporter=reporter
                )
                measured = replace(measured, served=served)
        plan = plan_figures(config, arch, engine.precision, engine.profile)
        variants.append(variant_result(engine, measured, facts=facts[engine], plan=plan, published=published))
    peers = measure_peers(settings, plans, load=load, reporter=reporter) if load is not None else ()
    after = snapshot(gpu_clocks(backends))
    report = BenchReport(
        created_at=datetime.now(timezone.utc),
        model=config.model.name,
        target=config.target.gpu,
        plan_applies=all(b.bench_plan_applies() for b in backends),
        host=host_facts(backends),
        machine=machine_state(before, after),
        settings=settings,
        variants=tuple(variants),
        peers=peers,
        published=published,
    )
    if previous is not None:
        report = against_previous(report, previous)
    return report, write_bench_report(report, out_dir)
