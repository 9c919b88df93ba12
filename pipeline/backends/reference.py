"""The `reference` backend: the project's PyTorch runtime (pipeline.runtime) plays the engine on the CPU.

Its build packs the calibrated checkpoint into engine/ in TensorRT-LLM's engine
shape (config.json with the profile's build_config, as trtllm-build would write
it; rank0.safetensors, a hard link to the checkpoint's weights), then verifies
it with a forward pass. The runtime enforces the profile's limits as an engine
does, and emulates every format, so every later stage runs the same way as on a
GPU: the gate scores it, publish serves it through a Python model with the
TensorRT-LLM backend's tensors, on the tritonserver bundled with the project's
install. This is what CI and the demo run, with no GPU and no TensorRT-LLM.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.backends.base import (
    BuildPaths,
    EngineBuild,
    EngineInfo,
    EngineRunner,
    PlannedCommand,
    TritonServing,
    by_length,
    checkpoint_sha256,
    write_engine_info,
)
from pipeline.backends.trtllm_engine.engine import (
    ENGINE_CONFIG,
    REFERENCE_WEIGHTS,
    expected_build_config,
    read_engine_config,
    read_engine_limits,
    runtime_limits,
)
from pipeline.core.atomic import link_or_copy
from pipeline.core.errors import InputError, StageError
from pipeline.facts.container import DEFAULT_PORTS, ServePorts
from pipeline.facts.formats import FormatGap, Precision, missing_kernels
from pipeline.runtime.checkpoint import real_vocab_size
from pipeline.runtime.limits import EngineLimits

if TYPE_CHECKING:
    import torch

    from pipeline.bench.machine import GpuClocks
    from pipeline.bench.memory import MemoryProbe
    from pipeline.core.tools import ToolRunner
    from pipeline.execution.resources import TaskResources
    from pipeline.facts.architecture import Architecture
    from pipeline.facts.config import PipelineConfig
    from pipeline.facts.targets import Target
    from pipeline.planning.memory import ProfilePlan
    from pipeline.planning.tasks import Task
    from pipeline.stages.base import RunOptions, StageContext

# What serves a reference repository: the tritonserver bundled with nvidia-pytriton (Python backend).
CPU_SERVER = "nvidia-pytriton==0.7.0 (tritonserver 2.51.0, Python backend)"


class ReferenceBackend:
    name = "reference"
    description = (
        "the PyTorch reference runtime on the CPU playing trtllm-engine (its checkpoint; CI and demo)"
    )
    plays = "trtllm-engine"
    checkpoint = "tensorrt-llm"

    def unavailable_on(self, target: Target) -> str | None:
        if target.sm is not None:
            return "it runs on the host CPU (target 'cpu') only"
        return None

    def format_problem(self, precision: Precision, kv_cache_dtype: str, target: Target) -> FormatGap | None:
        # It emulates every format's arithmetic, so no GPU architecture limits it; it refuses what the
        # backend it plays has no kernels for on any GPU.
        return missing_kernels(self.plays, precision, kv_cache_dtype)

    def task_resources(self, stage: str, target: Target) -> TaskResources:
        from pipeline.execution.resources import TaskResources

        return TaskResources(cpus=1)

    def preflight(
        self,
        config: PipelineConfig,
        plans: list[ProfilePlan],
        options: RunOptions,
        *,
        work_dir: Path,
        log_path: Path,
        pending: Callable[[], bool],
        runner: ToolRunner,
    ) -> None:
        """Any host that runs the pipeline can pack a checkpoint: nothing to check."""

    def build(self, ctx: StageContext, paths: BuildPaths, plan: ProfilePlan) -> EngineBuild:
        if ctx.config.build.visualize:
            ctx.reporter.warn(
                f"{ctx.task.id}: build.visualize: the reference backend has no TensorRT network to export"
            )
        return pack_engine(ctx, paths, plan)

    def planned_build(
        self, config: PipelineConfig, task: Task, arch: Architecture | None, paths: BuildPaths
    ) -> list[PlannedCommand]:
        return []  # packing runs in the pipeline's own process

    def after_build(self, config: PipelineConfig, work_dir: Path, artifact: Path, built: EngineBuild) -> None:
        """Its builds share nothing."""

    def limits(self, engine_dir: Path) -> EngineLimits:
        return read_engine_limits(engine_dir)

    def load_runner(self, engine_dir: Path, info: EngineInfo, *, max_batch_size: int | None) -> EngineRunner:
        engine_config = read_engine_config(engine_dir)
        return ReferenceRunner.load(
            engine_dir, engine_config, runtime_limits(engine_config, engine_dir, max_batch_size)
        )

    def model_config(self, engine_dir: Path) -> dict[str, Any]:
        return read_engine_config(engine_dir)["pretrained_config"]

    def container(self, config: PipelineConfig) -> str | None:
        return None

    def serving(self, config: PipelineConfig) -> TritonServing:
        from pipeline.serving.repository import ENGINE_SUBDIR

        return TritonServing(
            triton_backend="python",
            # The Python model resolves a relative path against the repository: served where it lies.
            engine_dir=ENGINE_SUBDIR,
            serve_with=CPU_SERVER,
            container=None,
            mount_path=None,
        )

    def serve_command(
        self,
        config: PipelineConfig,
        precision: str,
        profile: str,
        repository: Path,
        ports: ServePorts = DEFAULT_PORTS,
    ) -> PlannedCommand:
        # The bundled tritonserver needs a view of the version and its environment: `serve` sets both up.
        where = []
        if ports != DEFAULT_PORTS:
            where = ["--host", ports.host, *(a for o, port in ports.named().items() for a in (o, str(port)))]
        return PlannedCommand(
            purpose=f"serve {self.plays}/{precision}/{profile} on the bundled tritonserver",
            argv=[
                "trtllm-pipeline",
                "serve",
                "--backend",
                self.plays,
                "--precision",
                precision,
                "--profile",
                profile,
                *where,
            ],
        )

    def bench_runtime(self) -> str:
        from pipeline.execution.driver import tool_version

        return f"{self.name}: the reference runtime (PyTorch {tool_version('torch')}) on the CPU, playing {self.plays}"

    def bench_host_facts(self) -> dict[str, str]:
        import torch  # the runtime has loaded it already

        # CPU figures depend on it as much as on the cores (an oversubscribed host favours 1).
        return {"torch_threads": str(torch.get_num_threads())}

    def bench_plan_applies(self) -> bool:
        return False  # the plan models the target GPU; these engines run in PyTorch on the CPU

    def bench_gpu_clocks(self) -> tuple[GpuClocks, ...]:
        return ()  # the CPU runs these engines

    def memory_probe(self, *, served: bool) -> MemoryProbe | None:
        from pipeline.bench.memory import ProcessRssProbe

        # A CPU server's memory is another process's, which this one cannot see.
        return None if served else ProcessRssProbe()


class ReferenceRunner:
    """A reference engine: the packed checkpoint on the PyTorch reference runtime."""

    def __init__(self, model: Any, engine_config: dict[str, Any]) -> None:
        self.model = model
        self.engine_config = engine_config

    @classmethod
    def load(cls, engine_dir: Path, engine_config: dict[str, Any], limits: EngineLimits) -> ReferenceRunner:
        """A packed TensorRT-LLM checkpoint (the engine path's)."""
        from pipeline.runtime import ReferenceModel
        from pipeline.runtime.checkpoint import load_tensors, parse_checkpoint_config
        from pipeline.runtime.weights import build_weights

        config = parse_checkpoint_config(
            engine_config["pretrained_config"], engine_dir / ENGINE_CONFIG, field_prefix="pretrained_config."
        )
        weights = build_weights(load_tensors(engine_dir), config, engine_dir)
        return cls(ReferenceModel(config, weights, limits), engine_config)

    @property
    def limits(self) -> EngineLimits:
        return self.model.limits

    def context_logits(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        import torch

        self.limits.check([len(s) for s in sequences])
        return by_length(
            sequences, lambda batch: list(self.model.logits(torch.tensor(batch, dtype=torch.long)))
        )

    def generate(self, prompts: list[list[int]], **options: Any) -> list[list[int]]:
        return self.model.generate(prompts, **options)

    def close(self) -> None:
        """Nothing outside Python's own memory to release."""


# --- build: pack and verify the checkpoint -----------------------------------------------------


def reference_engine_config(
    checkpoint_config: dict[str, Any], build_config: dict[str, Any]
) -> dict[str, Any]:
    """config.json in TensorRT-LLM's engine shape for the reference runtime."""
    return {
        "version": f"trtllm-pipeline {__version__} (reference)",
        "pretrained_config": checkpoint_config,
        "build_config": build_config,
    }


def pack_engine(ctx: StageContext, paths: BuildPaths, plan: ProfilePlan) -> EngineBuild:
    import torch

    checkpoint, engine_dir = paths.checkpoint, paths.engine_dir
    config_path = checkpoint / ENGINE_CONFIG
    try:
        checkpoint_config = json.loads(config_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable checkpoint config: {exc}", path=config_path) from None
    weights = checkpoint / REFERENCE_WEIGHTS
    if not weights.is_file():
        raise InputError("checkpoint weights missing", path=weights, hint="rerun calibrate with --force")
    engine_dir.mkdir()
    # A hard link costs no space (the executor verified the checkpoint; the manifest then knows these
    # bytes by their stat); a copy is checked against the checkpoint's sha256 before it counts.
    link_or_copy(weights, engine_dir / REFERENCE_WEIGHTS, checkpoint_sha256(ctx, REFERENCE_WEIGHTS))
    build_config = expected_build_config(ctx.profile, ctx.config.build, plan)
    engine_config = reference_engine_config(checkpoint_config, build_config)
    (engine_dir / ENGINE_CONFIG).write_text(json.dumps(engine_config, indent=2) + "\n")
    info = EngineInfo(backend=ctx.backend.name, target=ctx.config.target.gpu, torch_version=torch.__version__)
    write_engine_info(engine_dir, info)

    verify_forward(ctx, engine_dir, real_vocab_size(checkpoint_config))
    return EngineBuild(engine=info, command=[])


def verify_forward(ctx: StageContext, engine_dir: Path, vocab: int) -> None:
    """The packed engine loads on the reference runtime and a short forward pass is finite."""
    import torch

    from pipeline.backends import load_runner

    runner = load_runner(engine_dir)
    length = min(8, ctx.profile.max_input_len)
    (logits,) = runner.context_logits([[i % vocab for i in range(length)]])
    if tuple(logits.shape) != (length, vocab) or not bool(torch.isfinite(logits).all()):
        raise StageError(
            ctx.task.stage,
            f"the packed checkpoint's forward pass gave logits {tuple(logits.shape)}, not finite {(length, vocab)}",
        )
    ctx.log.info("verified: logits %s, finite", tuple(logits.shape))
