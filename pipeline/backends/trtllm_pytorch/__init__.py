"""The `trtllm-pytorch` backend: TensorRT-LLM 1.2.1's PyTorch backend (the LLM API), which runs a Hugging
Face checkpoint with no compile step; what `trtllm-serve`, Triton's llmapi model and upstream's later
releases run.

    options.py  the LLM API options of one profile (pure; field names vendored from llm_args.py)
    build.py    the build: the checkpoint and its options in engine/, loaded once on the build host
    load.py     the child process that loads them with tensorrt_llm.LLM and reports what it made of them

Which precisions it runs is its column of the format table (pipeline.facts.formats): no W8A8
SmoothQuant and no INT8 KV cache, which only the trtllm-engine backend builds.

    runner.py   the gate's (and bench's) runner over tensorrt_llm.LLM: context logits, greedy generation

calibrate exports ModelOpt's unified Hugging Face checkpoint for it (pipeline.calibration.unified).
Publish turns a build into one release with two consumers of its checkpoint: Triton's llmapi model
repository and a trtllm-serve bundle (pipeline.serving.pytorch.release), served by the container that
loaded the options, the release mounted read-only at publish.mount_path. bench times a build in its own
process through the same runner (the LLM API), with the harness that times the engine backend's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.backends.base import (
    BuildPaths,
    EngineBuild,
    EngineInfo,
    EngineRunner,
    PlannedCommand,
    TritonServing,
)
from pipeline.backends.gpu import GpuBackend
from pipeline.facts.container import DEFAULT_PORTS, ServePorts

if TYPE_CHECKING:
    from pipeline.core.tools import ToolRunner
    from pipeline.facts.architecture import Architecture
    from pipeline.facts.config import PipelineConfig
    from pipeline.planning.memory import ProfilePlan
    from pipeline.planning.tasks import Task
    from pipeline.runtime.limits import EngineLimits
    from pipeline.stages.base import RunOptions, StageContext


class TrtllmPytorchBackend(GpuBackend):
    name = "trtllm-pytorch"
    runs_on_gpu = "TensorRT-LLM's PyTorch backend runs on a GPU"
    plays = "trtllm-pytorch"
    checkpoint = "hf-unified"
    description = "TensorRT-LLM 1.2.1's PyTorch backend (LLM API): a Hugging Face checkpoint and its options"

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
        from pipeline.backends.trtllm_pytorch.build import preflight

        preflight(
            config, plans, options, work_dir=work_dir, log_path=log_path, pending=pending, runner=runner
        )

    def build(self, ctx: StageContext, paths: BuildPaths, plan: ProfilePlan) -> EngineBuild:
        from pipeline.backends.trtllm_pytorch.build import build_options

        return build_options(ctx, paths, plan)

    def planned_build(
        self, config: PipelineConfig, task: Task, arch: Architecture | None, paths: BuildPaths
    ) -> list[PlannedCommand]:
        from pipeline.backends.trtllm_pytorch.build import planned_build

        return planned_build(config, task, arch, paths)

    def after_build(self, config: PipelineConfig, work_dir: Path, artifact: Path, built: EngineBuild) -> None:
        """Its builds share nothing (no TensorRT timing cache: nothing is compiled)."""

    def limits(self, engine_dir: Path) -> EngineLimits:
        from pipeline.backends.trtllm_pytorch.options import options_limits

        return options_limits(engine_dir)

    def load_runner(self, engine_dir: Path, info: EngineInfo, *, max_batch_size: int | None) -> EngineRunner:
        from pipeline.backends.trtllm_pytorch.runner import LlmApiRunner

        return LlmApiRunner.load(engine_dir, info, max_batch_size=max_batch_size)

    def serving(self, config: PipelineConfig) -> TritonServing:
        from pipeline.serving.compat import serving_container
        from pipeline.serving.pytorch.release import release_paths

        container = serving_container(config.publish.container)
        mount_path = config.publish.mount_path
        checkpoint, _ = release_paths(mount_path, config.model.name)
        return TritonServing(
            # Triton's llmapi model is a Python model; the LLM API reads the checkpoint where it is mounted.
            triton_backend="python",
            engine_dir=checkpoint,
            serve_with=container.tag,
            container=container,
            mount_path=mount_path,
        )

    def serve_command(
        self,
        config: PipelineConfig,
        precision: str,
        profile: str,
        repository: Path,
        ports: ServePorts = DEFAULT_PORTS,
    ) -> PlannedCommand:
        """trtllm-serve on the release's bundle; the note gives the llmapi repository's command."""
        import shlex

        from pipeline.serving.pytorch.release import (
            docker_llmapi_argv,
            docker_serve_argv,
            release_paths,
            serve_argv,
        )

        mount_path = config.publish.mount_path
        checkpoint, options = release_paths(mount_path, config.model.name)
        triton = docker_llmapi_argv(repository, mount_path, ports)
        return PlannedCommand(
            purpose=f"serve {self.name}/{precision}/{profile} with trtllm-serve (OpenAI-compatible)",
            argv=docker_serve_argv(repository, mount_path, serve_argv(checkpoint, options), ports),
            notes=[f"or Triton's llmapi model: {shlex.join(triton)}"],
        )

    def model_config(self, engine_dir: Path) -> dict[str, Any]:
        from pipeline.runtime.unified import unified_pretrained_config

        return unified_pretrained_config(engine_dir)

    def bench_runtime(self) -> str:
        from pipeline.execution.driver import tool_version

        return f"{self.name}: TensorRT-LLM {tool_version('tensorrt-llm')}'s LLM API (PyTorch backend)"
