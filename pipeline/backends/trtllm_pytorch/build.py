"""Building for the PyTorch backend: no compile step. The "engine" is the calibrated checkpoint with
the profile's LLM API options beside it, loaded once with the LLM API on the build host to prove that
TensorRT-LLM takes them and that the KV cache the plan counted on is there."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends.base import (
    BuildPaths,
    EngineBuild,
    EngineInfo,
    PlannedCommand,
    PlannedFile,
    checkpoint_sha256,
    write_engine_info,
)
from pipeline.backends.trtllm_engine.build import check_host
from pipeline.backends.trtllm_engine.environment import BuildEnvironment, build_needs, probe_environment
from pipeline.backends.trtllm_pytorch.options import OPTIONS_FILE, llm_api_options, options_text
from pipeline.core.atomic import TMP_PREFIX, link_or_copy
from pipeline.core.tools import ToolRunner, run_tool
from pipeline.facts.architecture import Architecture
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.facts.targets import TARGETS, Target
from pipeline.planning.memory import ProfilePlan, plan_profile
from pipeline.planning.tasks import Task

if TYPE_CHECKING:
    from pipeline.stages.base import RunOptions, StageContext

LOAD_LOG = "llm-load.log"
LOAD_REPORT = "llm_load.json"
# The memory plan (KV cache budget, largest batch) is worked out for the target GPU's memory.
ARCH_REASON = "the memory plan and the format table are for the target's GPU"


def _check_host(
    env: BuildEnvironment, target: Target, needs: tuple[int, int], disk: Path, options: RunOptions
) -> None:
    check_host(env, target, needs, disk, options, needs_trtllm_build=False, arch_reason=ARCH_REASON)


def load_argv(engine_dir: Path, report: Path, *, python: str = sys.executable) -> list[str]:
    """The child process that loads the options once (pipeline.backends.trtllm_pytorch.load)."""
    return [python, "-m", "pipeline.backends.trtllm_pytorch.load", str(engine_dir), str(report)]


def place_checkpoint(ctx: StageContext, paths: BuildPaths, plan: ProfilePlan) -> None:
    """engine/: the unified checkpoint's files (hard links, or copies checked against the calibrate
    manifest) and the profile's LLM API options beside them: what `LLM(engine/, **options)` and
    `trtllm-serve engine/ --extra_llm_api_options engine/llm_api_options.yaml` read."""
    engine_dir = paths.engine_dir
    engine_dir.mkdir(parents=True)
    for src in sorted(p for p in paths.checkpoint.iterdir() if p.is_file()):
        link_or_copy(src, engine_dir / src.name, checkpoint_sha256(ctx, src.name))
    (engine_dir / OPTIONS_FILE).write_text(options_text(llm_api_options(ctx.config, ctx.profile, plan)))


def build_options(ctx: StageContext, paths: BuildPaths, plan: ProfilePlan) -> EngineBuild:
    """Check the host, put the checkpoint and the options in engine/, load them once, record it."""
    target = TARGETS[ctx.config.target.gpu]
    load_log = ctx.log_path.with_name(f"{ctx.log_path.stem}.{LOAD_LOG}")
    load_log.unlink(missing_ok=True)
    env = probe_environment(load_log, runner=ctx.tools)
    _check_host(env, target, build_needs(plan), ctx.work_dir, ctx.options)
    engine_dir = paths.engine_dir
    place_checkpoint(ctx, paths, plan)
    report = paths.out_dir / LOAD_REPORT
    argv = load_argv(engine_dir, report)
    ctx.log.info("$ %s", shlex.join(argv))
    ctx.reporter.info(f"{ctx.task.id}: loading the LLM API options once (log: {load_log})")
    run_tool(argv, stage=ctx.task.stage, log_path=load_log, runner=ctx.tools)
    ctx.log.info("the runtime reports: %s", report.read_text())
    gpu = env.gpus[0]
    info = EngineInfo(
        backend=ctx.backend.name,
        target=target.name,
        gpu_name=gpu.name,
        sm=gpu.sm,
        tensorrt_llm_version=json.loads(report.read_text())["tensorrt_llm"],
        tensorrt_version=env.tensorrt,
        cuda_version=env.cuda,
        torch_version=env.torch,
    )
    write_engine_info(engine_dir, info)
    return EngineBuild(engine=info, command=argv)


def planned_build(
    config: PipelineConfig, task: Task, arch: Architecture | None, paths: BuildPaths
) -> list[PlannedCommand]:
    """The options file build_options would write for `task`, and the load that checks it."""
    purpose = f"load the {task.precision}/{task.profile} LLM API options once"
    if arch is None:
        note = "the options need the model's config.json: run `trtllm-pipeline fetch` first"
        return [PlannedCommand(purpose=purpose, argv=[], notes=[note])]
    assert task.backend and task.precision and task.profile, f"{task.id} is not a build"
    plan = plan_profile(config, arch, task.backend, Precision(task.precision), task.profile)
    options = llm_api_options(config, config.profile(task.profile), plan)
    engine_dir = paths.engine_dir
    out_dir = paths.out_dir
    return [
        PlannedCommand(
            purpose=purpose,
            argv=load_argv(engine_dir, out_dir / LOAD_REPORT, python="python"),
            notes=[
                f"the run writes {out_dir.parent}/{TMP_PREFIX}{out_dir.name}-*/, renamed to {out_dir.name}/ when whole"
            ],
            files=[PlannedFile(path=str(engine_dir / OPTIONS_FILE), text=options_text(options))],
        )
    ]


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
    largest load needs, unless every build is done already and intact."""
    if not pending():
        return
    env = probe_environment(log_path, runner=runner)
    needs = build_needs(max(plans, key=lambda p: p.weight_bytes)) if plans else (0, 0)
    work_dir.mkdir(parents=True, exist_ok=True)
    _check_host(env, TARGETS[config.target.gpu], needs, work_dir, options)
