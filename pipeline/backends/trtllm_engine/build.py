"""Building a TensorRT-LLM 1.2.1 engine: `trtllm-build` in a child process, after a preflight of the host.

The child process was chosen over the 1.2.1 LLM API because the build then frees
its GPU and host memory for sure, its output lands in a log of its own, the
exact command is recorded and can be rerun by hand, and the pipeline's process
never imports tensorrt_llm. The host must have TensorRT-LLM 1.2.1 importable, a
visible GPU of the target's SM, enough RAM and disk: `check_host` refuses
anything less in one line (exit 3), before any stage runs and again per build.

The profiles of a model on a target share a TensorRT timing cache under the
work dir (timing-cache/<model>/<target>-trt<version>.cache), which builds only
read: each writes its own (timing.cache in its artifact), and `share_timing_cache`,
run by the driver after the commit, copies it over the shared one in one rename,
unless that is newer. Concurrent builds thus never write one file, a reader sees
an old or a new cache whole, and the newest cache wins (a cache only saves build time).
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends.base import BuildPaths, EngineBuild, EngineInfo, PlannedCommand, write_engine_info
from pipeline.backends.trtllm_engine.argv import trtllm_build_argv
from pipeline.backends.trtllm_engine.engine import check_built_engine, expected_build_config
from pipeline.backends.trtllm_engine.environment import (
    ENGINE_ARCH_REASON,
    BuildEnvironment,
    build_needs,
    host_resources,
    preflight_problems,
    probe_environment,
    require_build_host,
)
from pipeline.backends.trtllm_engine.network import network_files
from pipeline.core.atomic import TMP_PREFIX, copy_file_atomic
from pipeline.core.tools import ToolRunner, run_tool
from pipeline.facts import layout
from pipeline.facts.architecture import Architecture
from pipeline.facts.config import PipelineConfig, Precision, Profile
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.facts.targets import TARGETS, Target
from pipeline.planning.memory import ProfilePlan, plan_profile
from pipeline.planning.tasks import Task

if TYPE_CHECKING:
    from pipeline.stages.base import RunOptions, StageContext


def build_argv(
    config: PipelineConfig,
    profile: Profile,
    plan: ProfilePlan,
    paths: BuildPaths,
    *,
    tensorrt_version: str | None,
    visible_gpus: int | None,
    executable: str = "trtllm-build",
) -> list[str]:
    """The trtllm-build argv of one build, for the build itself and for the dry run.

    visible_gpus is None where the build host is not known (the dry run): --workers is then the
    config's, or 1; on the build host trtllm-build caps it at the GPU count, and so does this.
    """
    workers = config.build.workers or 1
    if visible_gpus is not None:
        workers = min(config.build.workers or visible_gpus, visible_gpus)
    return trtllm_build_argv(
        paths.checkpoint,
        paths.engine_dir,
        profile,
        config.build,
        plan,
        layout.timing_cache_path(
            paths.work_dir, config.model.name, TARGETS[config.target.gpu], tensorrt_version
        ),
        paths.out_dir / layout.TIMING_CACHE,
        workers=workers,
        visualize_dir=layout.network_dir(paths.out_dir) if config.build.visualize else None,
        executable=executable,
    )


def check_host(
    env: BuildEnvironment,
    target: Target,
    needs: tuple[int, int],
    disk_path: Path,
    options: RunOptions,
    *,
    needs_trtllm_build: bool = True,
    arch_reason: str = ENGINE_ARCH_REASON,
) -> None:
    """require_build_host over this host's RAM and disk (the PyTorch backend's build needs no
    trtllm-build, and gives its own reason to hold the GPU to the target)."""
    ram, disk = host_resources(disk_path)
    require_build_host(
        preflight_problems(
            env,
            target,
            allow_arch_mismatch=options.allow_arch_mismatch,
            ram_needed=needs[0],
            ram_available=ram,
            disk_needed=needs[1],
            disk_free=disk,
            needs_trtllm_build=needs_trtllm_build,
            arch_reason=arch_reason,
        )
    )


def preflight(
    config: PipelineConfig,
    plans: list[ProfilePlan],
    options: RunOptions,
    *,
    work_dir: Path,
    log_path: Path,
    pending: Callable[[], bool],
    runner: ToolRunner,
) -> None:
    """Refuse a host without TensorRT-LLM 1.2.1, a GPU of the target's SM, or the RAM and disk the
    largest build needs, unless every engine is built already and intact."""
    if not pending():
        return  # this host need not be able to build what is built
    env = probe_environment(log_path, runner=runner)
    needs = build_needs(max(plans, key=lambda p: p.weight_bytes)) if plans else (0, 0)
    work_dir.mkdir(parents=True, exist_ok=True)
    check_host(env, TARGETS[config.target.gpu], needs, work_dir, options)


def build_engine(ctx: StageContext, paths: BuildPaths, plan: ProfilePlan) -> EngineBuild:
    """Probe and check the host, run trtllm-build, check what it wrote, record the engine."""
    target = TARGETS[ctx.config.target.gpu]
    # One log per build, next to the task's log so it survives a failed build.
    build_log = ctx.log_path.with_name(f"{ctx.log_path.stem}.{layout.BUILD_LOG}")
    build_log.unlink(missing_ok=True)
    env = probe_environment(build_log, runner=ctx.tools)
    check_host(env, target, build_needs(plan), ctx.work_dir, ctx.options)
    argv = build_argv(
        ctx.config,
        ctx.profile,
        plan,
        paths,
        tensorrt_version=env.tensorrt,
        visible_gpus=len(env.gpus),
        executable=env.trtllm_build or "trtllm-build",
    )
    ctx.log.info("$ %s", shlex.join(argv))
    ctx.reporter.info(f"{ctx.task.id}: trtllm-build (log: {build_log})")
    run_tool(argv, stage=ctx.task.stage, log_path=build_log, runner=ctx.tools)
    check_built_engine(
        paths.engine_dir, expected_build_config(ctx.profile, ctx.config.build, plan), stage=ctx.task.stage
    )
    graph = network_files(layout.network_dir(paths.out_dir)) if ctx.config.build.visualize else []
    gpu = env.gpus[0]
    info = EngineInfo(
        backend=ctx.backend.name,
        target=target.name,
        gpu_name=gpu.name,
        sm=gpu.sm,
        tensorrt_llm_version=env.tensorrt_llm,
        tensorrt_version=env.tensorrt,
        cuda_version=env.cuda,
        torch_version=env.torch,
    )
    write_engine_info(paths.engine_dir, info)
    shutil.copyfile(build_log, paths.out_dir / layout.BUILD_LOG)
    return EngineBuild(
        engine=info,
        command=argv,
        # trtllm-build asserts it wrote the cache (builder.py build()); without it there is none to share
        timing_cache=layout.TIMING_CACHE if (paths.out_dir / layout.TIMING_CACHE).is_file() else None,
        network_files=[p.relative_to(paths.out_dir).as_posix() for p in graph],
    )


def planned_build(
    config: PipelineConfig, task: Task, arch: Architecture | None, paths: BuildPaths
) -> list[PlannedCommand]:
    """The trtllm-build the run would start for `task`, as build_engine would call it. Two things
    only the build host knows are shown as the run would choose them there, with a note: --workers
    and the TensorRT version in the shared timing cache's name (the serving container's)."""
    purpose = f"build the {task.precision}/{task.profile} engine"
    if arch is None:
        note = "the argv needs the model's config.json: run `trtllm-pipeline fetch` first"
        return [PlannedCommand(purpose=purpose, argv=[], notes=[note])]
    assert task.backend and task.precision and task.profile, f"{task.id} is not a build"
    plan = plan_profile(config, arch, task.backend, Precision(task.precision), task.profile)
    argv = build_argv(
        config,
        config.profile(task.profile),
        plan,
        paths,
        tensorrt_version=SERVING_CONTAINER.tensorrt,
        visible_gpus=None,
    )
    out_dir = paths.out_dir
    notes = [
        f"--output_dir: the run writes {out_dir.parent}/{TMP_PREFIX}{out_dir.name}-*/, renamed to {out_dir.name}/ when whole"
    ]
    if config.build.workers is None:
        notes.append("--workers: one per visible GPU on the build host (1 shown)")
    return [PlannedCommand(purpose=purpose, argv=argv, notes=notes)]


def share_timing_cache(config: PipelineConfig, work_dir: Path, artifact: Path, built: EngineBuild) -> None:
    """Copy a build's timing cache over the shared one (mtime kept), unless the shared one is as new:
    an up-to-date build's older cache never replaces what a later build wrote."""
    if built.timing_cache is None:
        return
    own = artifact / built.timing_cache
    target = TARGETS[config.target.gpu]
    shared = layout.timing_cache_path(work_dir, config.model.name, target, built.engine.tensorrt_version)
    if shared.is_file() and shared.stat().st_mtime_ns >= own.stat().st_mtime_ns:
        return
    copy_file_atomic(own, shared)
