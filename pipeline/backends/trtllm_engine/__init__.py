"""The `trtllm-engine` backend: TensorRT-LLM 1.2.1 engines, built by `trtllm-build`, served by Triton's
C++ tensorrtllm backend in the serving container.

    argv.py         the trtllm-build command line of one profile (pure, pinned to 1.2.1's parser)
    build.py        the build: preflight of the host, trtllm-build in a child process, timing caches
    engine.py       an engine folder in TensorRT-LLM's shape: config.json, limits, the checks on it
    environment.py  what the build host has (a child Python's report) and whether it is enough
    network.py      the --visualize_network graph, recorded for viewing
    runner.py       a built engine through ModelRunnerCpp, with the runner API

Nothing here imports tensorrt_llm: the build runs in a child process (so GPU memory is surely freed
and a crash cannot take the pipeline with it), the probe asks a child Python what is installed, and
the runner imports TensorRT-LLM when it loads an engine.
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
from pipeline.backends.trtllm_engine import build
from pipeline.facts.container import DEFAULT_PORTS, ServePorts, serve_argv

if TYPE_CHECKING:
    from pipeline.core.tools import ToolRunner
    from pipeline.facts.architecture import Architecture
    from pipeline.facts.config import PipelineConfig
    from pipeline.planning.memory import ProfilePlan
    from pipeline.planning.tasks import Task
    from pipeline.runtime.limits import EngineLimits
    from pipeline.stages.base import RunOptions, StageContext


class TrtllmEngineBackend(GpuBackend):
    name = "trtllm-engine"
    runs_on_gpu = "TensorRT engines are built for a GPU"
    plays = "trtllm-engine"
    checkpoint = "tensorrt-llm"
    description = "TensorRT-LLM 1.2.1 engines (trtllm-build), served by Triton's tensorrtllm backend"

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
        build.preflight(
            config, plans, options, work_dir=work_dir, log_path=log_path, pending=pending, runner=runner
        )

    def build(self, ctx: StageContext, paths: BuildPaths, plan: ProfilePlan) -> EngineBuild:
        return build.build_engine(ctx, paths, plan)

    def planned_build(
        self, config: PipelineConfig, task: Task, arch: Architecture | None, paths: BuildPaths
    ) -> list[PlannedCommand]:
        return build.planned_build(config, task, arch, paths)

    def after_build(self, config: PipelineConfig, work_dir: Path, artifact: Path, built: EngineBuild) -> None:
        build.share_timing_cache(config, work_dir, artifact, built)

    def limits(self, engine_dir: Path) -> EngineLimits:
        from pipeline.backends.trtllm_engine.engine import read_engine_limits

        return read_engine_limits(engine_dir)

    def load_runner(self, engine_dir: Path, info: EngineInfo, *, max_batch_size: int | None) -> EngineRunner:
        from pipeline.backends.trtllm_engine.engine import read_engine_config, runtime_limits
        from pipeline.backends.trtllm_engine.runner import TensorRTRunner

        engine_config = read_engine_config(engine_dir)
        limits = runtime_limits(engine_config, engine_dir, max_batch_size)
        return TensorRTRunner.load(
            engine_dir, engine_config, info, limits, size_kv_cache_to_batch=max_batch_size is not None
        )

    def model_config(self, engine_dir: Path) -> dict[str, Any]:
        from pipeline.backends.trtllm_engine.engine import read_engine_config

        return read_engine_config(engine_dir)["pretrained_config"]

    def serving(self, config: PipelineConfig) -> TritonServing:
        from pipeline.serving.compat import serving_container
        from pipeline.serving.repository import ENGINE_SUBDIR

        container = serving_container(config.publish.container)
        mount_path = config.publish.mount_path
        return TritonServing(
            triton_backend="tensorrtllm",
            # The C++ backend needs an absolute path: where the container mounts the release.
            engine_dir=f"{mount_path}/{ENGINE_SUBDIR}",
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
        return PlannedCommand(
            purpose=f"serve {self.name}/{precision}/{profile}",
            argv=serve_argv(repository, config.publish.mount_path, ports),
        )

    def bench_runtime(self) -> str:
        from pipeline.execution.driver import tool_version

        return f"{self.name}: TensorRT-LLM {tool_version('tensorrt-llm')}'s engine runner (ModelRunnerCpp)"
