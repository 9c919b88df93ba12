"""`make gpu-selftest`: the whole GPU path on a small model, on this host's own GPU, in a few minutes.

Inside the serving container on a GPU host: the tiny Mistral at its "gpu" size (hidden 256,
head_dim 64: shapes TensorRT-LLM's kernels accept) goes through the real pipeline for the target
that matches the visible GPU (a real `trtllm-build`, the gate on that engine, publish), then the
container's own `tritonserver` with the `tensorrtllm` backend serves the published repository:
one generate and two streamed requests (ensemble, BLS) must equal the engine's greedy answer.
That reference runs in a child process, so its GPU memory is released before the server starts.

Every step is a row of the pass/fail table and of report.json. The process edges (the probe's
child Python, the stages, the server) are parameters, so the plan and the report are tested with
stand-ins on machines without a GPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, PrivateAttr

from pipeline.backends import BACKENDS, targets_of
from pipeline.backends.trtllm_engine import TrtllmEngineBackend
from pipeline.backends.trtllm_engine.environment import BuildEnvironment, GpuInfo, probe_environment
from pipeline.commands.checks import check_work_dir
from pipeline.commands.run import RunRequest, run_pipeline
from pipeline.core.atomic import write_text_atomic
from pipeline.core.errors import MissingDependencyError, PipelineError, StageError
from pipeline.core.reporter import Reporter
from pipeline.core.tools import ToolRunner, run_tool
from pipeline.execution.results import TaskState
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.facts.container import SERVING_CONTAINER, TRITON_HOME
from pipeline.facts.targets import Target
from pipeline.planning.memory import GIB
from pipeline.serving.server import TritonInstall, TritonServer
from pipeline.stages import STAGES
from pipeline.stages.base import Stage

if TYPE_CHECKING:
    from pipeline.serving.smoke_report import SmokeCheck

STAGE = "gpu-selftest"
BACKEND = TrtllmEngineBackend.name  # the GPU path it proves: TensorRT-LLM engines on Triton
PRECISION = Precision.int8_sq  # the real job's first precision: SmoothQuant kernels on this GPU
PROFILE = {"name": "selftest", "max_batch_size": 2, "max_input_len": 96, "max_seq_len": 128}
MAX_TOKENS = 16
# Every run really builds, gates and publishes; the generated model is deterministic, so kept.
FORCED = frozenset({"calibrate", "build", "gate_engine", "gate", "publish"})
REPORT_NAME = "report.json"


class Check(BaseModel):
    name: str
    ok: bool | None  # None: skipped, an earlier step failed
    detail: str = ""
    duration_s: float = 0.0


class SelftestReport(BaseModel):
    ok: bool
    container: str
    gpu: str | None = None
    target: str | None = None
    repository: str | None = None
    checks: list[Check]
    # The first error a step raised (its exit code is the run's), not part of report.json.
    _error: PipelineError | None = PrivateAttr(default=None)

    @property
    def error(self) -> PipelineError | None:
        """What the self-test exits with: the first error a step raised, else a failed check."""
        if self._error is not None or self.ok:
            return self._error
        failed = [c for c in self.checks if c.ok is False]
        return StageError(
            STAGE, f"{len(failed)} check(s) failed; first, {failed[0].name}: {failed[0].detail}"
        )


def target_for(gpu: GpuInfo) -> Target:
    """The target row for a visible GPU: its SM, and the nearest memory size among that SM's rows."""
    targets = targets_of(BACKENDS[BACKEND])
    rows = [t for t in targets if t.sm == gpu.sm]
    if not rows:
        known = ", ".join(sorted({f"sm{t.sm}" for t in targets}))
        raise MissingDependencyError(
            f"GPU {gpu.name} is sm{gpu.sm}: pipeline/facts/targets.py has targets for {known}"
        )
    return min(rows, key=lambda t: abs(t.memory_gib - gpu.memory_bytes / GIB))


def host_target(env: BuildEnvironment) -> tuple[GpuInfo, Target]:
    if env.tensorrt_llm is None:
        raise MissingDependencyError(
            f"TensorRT-LLM is not installed: run the self-test inside {SERVING_CONTAINER.tag} on a GPU host",
            hint="docker/Dockerfile builds that image with this project; then `make gpu-selftest` in it",
        )
    if not env.gpus:
        raise MissingDependencyError("no CUDA GPU is visible", hint="start the container with --gpus all")
    return env.gpus[0], target_for(env.gpus[0])


def selftest_config(target: str, work_dir: Path, data_dir: Path) -> PipelineConfig:
    """The real pipeline's config for the small model on `target`, published under work_dir.

    The published version is served where it lies, so the engine's absolute gpt_model_path
    (publish.mount_path) is that version's own path.
    """
    from pipeline.serving.release import CURRENT
    from pipeline.stages.publish import variant_destination

    data = {
        "model": {"name": "gpu-selftest", "source": "tiny", "tiny_size": "gpu", "instruct": True},
        "target": {"gpu": target, "backend": BACKEND},
        "quantization": {"precisions": [PRECISION.value]},
        "calibration": {
            "dataset": data_dir / "offline-mix.jsonl",
            "samples": 64,
            "seq_len": 128,
            "batch_size": 8,
        },
        "profiles": [PROFILE],
        "gate": {
            "eval_dataset": data_dir / "offline-eval.jsonl",
            "eval_samples": 32,
            "eval_seq_len": 128,
            "prompts": data_dir / "prompts.jsonl",
            "max_new_tokens": MAX_TOKENS,
        },
        "publish": {"destination": work_dir.absolute() / "model_repository"},
    }
    config = PipelineConfig.model_validate(data)
    current = variant_destination(config, BACKEND, PRECISION.value, PROFILE["name"]) / CURRENT
    publish = config.publish.model_copy(update={"mount_path": str(current)})
    return config.model_copy(update={"publish": publish})


# (published repository, prompts, max_tokens, work dir) -> one check per route
Serve = Callable[[Path, list[str], int, Path], list["SmokeCheck"]]
# (config, fetch artifact, prompt, work dir) -> the PyTorch backend's rows (pytorch_checks)
PytorchChecks = Callable[[PipelineConfig, Path, str, Path], list["Check"]]


def run_selftest(
    work_dir: Path,
    data_dir: Path,
    *,
    reporter: Reporter,
    runner: ToolRunner = subprocess.run,
    stages: Mapping[str, Stage] = STAGES,
    serve: Serve | None = None,
    mpi_parent: Callable[[], AbstractContextManager[None]] | None = None,
    pytorch: PytorchChecks | None = None,
) -> SelftestReport:
    """Run every step, record each as a check, write work_dir/report.json; never raises for a failed step
    (a work dir it cannot write to is no step: it is refused before the first)."""
    check_work_dir(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    report = SelftestReport(ok=False, container=SERVING_CONTAINER.tag, checks=[])
    checks = report.checks
    t0 = time.perf_counter()
    try:
        env = probe_environment(work_dir / "probe.log", runner=runner)
        gpu, target = host_target(env)
    except PipelineError as exc:
        checks.append(Check(name="environment", ok=False, detail=exc.message))
        report._error = exc
        return _finish(report, work_dir)
    report.gpu, report.target = gpu.name, target.name
    checks.append(
        Check(
            name="environment",
            ok=True,
            detail=f"TensorRT-LLM {env.tensorrt_llm}, TensorRT {env.tensorrt}, {gpu.name} (sm{gpu.sm}) -> {target.name}",
            duration_s=time.perf_counter() - t0,
        )
    )
    checks.append(children_after_mpi(work_dir, runner=runner, mpi_parent=mpi_parent or tensorrt_llm_imported))
    if not checks[-1].ok:
        return _finish(report, work_dir)
    config = selftest_config(target.name, work_dir, data_dir)
    reporter.info(f"{STAGE}: the pipeline on a {config.model.tiny_size}-size tiny Mistral for {target.name}")
    run = run_pipeline(
        config,
        work_dir,
        RunRequest(force=FORCED, no_wait=True),
        reporter=reporter,
        stages=stages,
        tools=runner,
    ).report
    report._error = run.error
    for r in run.results:
        passed = r.state in (TaskState.ran, TaskState.up_to_date)
        checks.append(Check(name=r.task.id, ok=passed, detail=r.summary or r.reason, duration_s=r.duration_s))
    if not all(c.ok for c in checks):
        checks.append(Check(name="serve", ok=None, detail="skipped: an earlier step failed"))
        return _finish(report, work_dir)

    from pipeline.datasets.jsonl import load_prompts
    from pipeline.serving.smoke import published_repository

    t0 = time.perf_counter()
    try:
        repository = published_repository(config, BACKEND, PRECISION.value, PROFILE["name"])
        report.repository = str(repository.resolve())
        prompts = load_prompts(config.gate.prompts, limit=1).texts
        answers = (serve or serve_in_container)(repository, prompts, MAX_TOKENS, work_dir / "serve")
    except PipelineError as exc:
        checks.append(Check(name="serve", ok=False, detail=exc.message, duration_s=time.perf_counter() - t0))
        report._error = exc
        return _finish(report, work_dir)
    for a in answers:
        detail = repr(a.got) if a.ok else f"expected {a.expected!r}, got {a.got!r}"
        checks.append(
            Check(name=f"serve {a.route}", ok=a.ok, detail=detail, duration_s=time.perf_counter() - t0)
        )
    fetched = next(r.path for r in run.results if r.task.stage == "fetch")
    pytorch = pytorch or (lambda *args: pytorch_checks(*args, runner=runner))
    checks += pytorch(config, fetched, prompts[0], work_dir / "pytorch")
    return _finish(report, work_dir)


@contextmanager
def tensorrt_llm_imported() -> Iterator[None]:
    import tensorrt_llm  # noqa: F401

    yield


def children_after_mpi(
    work_dir: Path, *, runner: ToolRunner, mpi_parent: Callable[[], AbstractContextManager[None]]
) -> Check:
    """Import TensorRT-LLM here, as calibration's export and the gate do in a real run (its import
    initialises MPI, whose singleton putenv()s PMIX_*), then start the probe's child Python again: a
    child that inherits those variables fails in orte_init, and the builds after it would too."""
    t0 = time.perf_counter()
    with mpi_parent():
        try:
            probe_environment(work_dir / "probe-after-mpi.log", runner=runner)
        except PipelineError as exc:
            return Check(
                name="child after MPI", ok=False, detail=exc.message, duration_s=time.perf_counter() - t0
            )
    detail = "TensorRT-LLM imported here, then a child Python imported it too"
    return Check(name="child after MPI", ok=True, detail=detail, duration_s=time.perf_counter() - t0)


def pytorch_checks(
    config: PipelineConfig, fetched: Path, prompt: str, work_dir: Path, *, runner: ToolRunner = subprocess.run
) -> list[Check]:
    """TensorRT-LLM's PyTorch backend on the fetched model, served as publish releases it: a release
    written from the Hugging Face folder (served in place: its own path is the mount path), then
    pipeline.serving.pytorch.gpu_check in a child: LLM load, one generate, one streamed, one
    OpenAI request to the bundle's trtllm-serve command."""
    from pipeline.backends.trtllm_pytorch.options import llm_api_options
    from pipeline.core.hashing import sha256_file
    from pipeline.facts import layout
    from pipeline.facts.architecture import Architecture
    from pipeline.planning.memory import plan_profile
    from pipeline.serving.pytorch.release import write_release

    t0 = time.perf_counter()
    out = work_dir / "pytorch-checks.json"
    try:
        model_dir = layout.model_dir(fetched)
        release = work_dir.absolute() / "release"
        shutil.rmtree(release, ignore_errors=True)
        release.parent.mkdir(parents=True, exist_ok=True)
        # The profile's options from the same plan the engine build checked (its shape; the KV cache
        # dtype follows the unquantized checkpoint either way).
        plan = plan_profile(config, Architecture.load(model_dir), BACKEND, PRECISION, PROFILE["name"])
        files = {p.name: sha256_file(p) for p in sorted(model_dir.iterdir()) if p.is_file()}
        write_release(
            release,
            model=config.model.name,
            checkpoint_dir=model_dir,
            checkpoint_sha256=files,
            tokenizer_dir=model_dir,
            tokenizer_sha256=files,
            options=llm_api_options(config, config.profile(PROFILE["name"]), plan),
            mount_path=str(release),
            decoupled=True,
        )
        argv = [sys.executable, "-m", "pipeline.serving.pytorch.gpu_check", str(release), prompt]
        argv += [str(MAX_TOKENS), str(out)]
        run_tool(argv, stage=STAGE, log_path=work_dir / "gpu-check.log", runner=runner)
        rows = json.loads(out.read_text())
    except (PipelineError, OSError, ValueError) as exc:
        detail = exc.message if isinstance(exc, PipelineError) else str(exc)
        return [Check(name="pytorch", ok=False, detail=detail, duration_s=time.perf_counter() - t0)]
    elapsed = time.perf_counter() - t0
    return [Check(name=r["name"], ok=r["ok"], detail=r["detail"], duration_s=elapsed) for r in rows]


def _finish(report: SelftestReport, work_dir: Path) -> SelftestReport:
    report.ok = bool(report.checks) and all(c.ok for c in report.checks)
    write_text_atomic(work_dir / REPORT_NAME, report.model_dump_json(indent=2) + "\n")
    return report


# --- the container's tritonserver -----------------------------------------------------------------


class ContainerTritonServer(TritonServer):
    """The image's own tritonserver, with its backends folder as it is (tensorrtllm and python)."""

    def _backends(self) -> Path:
        return TRITON_HOME / "backends"


def container_install() -> TritonInstall:
    server = shutil.which("tritonserver") or str(TRITON_HOME / "bin" / "tritonserver")
    python = TRITON_HOME / "backends" / "python"
    install = TritonInstall(
        tritonserver=Path(server),
        python_backend=python,
        stub=python / "triton_python_backend_stub",
        libs=TRITON_HOME / "lib",
        python_bin=Path(sys.executable).parent,
    )
    install.check()
    if not (TRITON_HOME / "backends" / "tensorrtllm").is_dir():
        raise MissingDependencyError(
            f"{TRITON_HOME}/backends has no tensorrtllm backend", hint=f"run inside {SERVING_CONTAINER.tag}"
        )
    return install


def serve_in_container(
    repository: Path, prompts: list[str], max_tokens: int, work_dir: Path
) -> list[SmokeCheck]:
    from pipeline.serving.smoke import ask_server, require_intact, serving_view

    install = container_install()
    expected = reference_in_child(repository, prompts, max_tokens, work_dir)
    # As smoke does: the Python backend writes into the models it loads, so it loads a view of the
    # version, and the version must still match its manifest afterwards.
    served = serving_view(repository, work_dir)
    with ContainerTritonServer(served, work_dir=work_dir, install=install) as server:
        answers = ask_server(server.url, prompts, expected, max_tokens=max_tokens)
    require_intact(repository, "the server wrote into it")
    return answers


def reference_in_child(
    repository: Path,
    prompts: list[str],
    max_tokens: int,
    work_dir: Path,
    *,
    runner: ToolRunner = subprocess.run,
) -> list[str]:
    """The engine's greedy answers, from a child process that takes its GPU memory with it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    request, answers = work_dir / "reference-prompts.json", work_dir / "reference-answers.json"
    request.write_text(json.dumps(prompts))
    argv = [
        sys.executable,
        "-m",
        "pipeline.commands.selftest",
        "reference",
        repository,
        max_tokens,
        request,
        answers,
    ]
    run_tool(argv, stage=STAGE, log_path=work_dir / "reference.log", runner=runner)
    return json.loads(answers.read_text())


def _reference_main(repository: str, max_tokens: str, request: str, answers: str) -> None:
    from pipeline.serving.smoke import reference_answers

    prompts = json.loads(Path(request).read_text())
    Path(answers).write_text(json.dumps(reference_answers(Path(repository), prompts, int(max_tokens))))


if __name__ == "__main__":
    if sys.argv[1:2] != ["reference"] or len(sys.argv) != 6:
        sys.exit(
            "usage: python -m pipeline.commands.selftest reference REPOSITORY MAX_TOKENS PROMPTS_JSON OUT_JSON"
        )
    _reference_main(*sys.argv[2:])
