"""The build stage: one engine per precision x profile, after the memory plan proves the profile fits.

GPU targets run TensorRT-LLM 1.2.1's `trtllm-build` in a child process (argv
from `pipeline.backends.trtllm_engine.argv`), after a preflight of the host: TensorRT-LLM
1.2.1 importable, a visible GPU of the target's SM, enough RAM and disk. The
child process was chosen over the 1.2.1 LLM API because the build then frees
its GPU and host memory for sure, its output lands in a log of its own, the
exact command is recorded and can be rerun by hand, and the pipeline's process
never imports tensorrt_llm.

The profiles of a model on a target share a TensorRT timing cache under the
work dir (timing-cache/<model>/<target>-trt<version>.cache), which builds only
read: each writes its own (timing.cache in its artifact), and `after_commit`,
run by the driver, copies it over the shared one in one rename, unless that is
newer. Concurrent builds thus never write one file, a reader sees an old or a
new cache whole, and the newest cache wins (a cache only saves build time).

The cpu-reference target packs the calibrated checkpoint into engine/ in the
same layout (config.json in TensorRT-LLM's engine shape, with the profile's
build_config; rank0.safetensors), verifies it by running a forward pass on
the reference runtime, and enforces the profile's limits at run time, so every
later stage runs the same way on both targets.

After each run of a build, up to date or not, `after_commit` makes
engines/<model>/<precision>/<target>/<profile> (next to the work dir) a
relative symlink to the artifact; a link that points into another work dir's
store is left alone, with a warning. A gate engine (pipeline.stages.gate_engine,
built here too, with --gather_context_logits) gets no link: it is never served.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline import __version__
from pipeline.backends.trtllm_engine.argv import trtllm_build_argv
from pipeline.backends.trtllm_engine.engine import (
    ENGINE_CONFIG,
    REFERENCE_WEIGHTS,
    EngineInfo,
    check_built_engine,
    expected_build_config,
    write_engine_info,
)
from pipeline.backends.trtllm_engine.environment import (
    BuildEnvironment,
    build_needs,
    host_resources,
    preflight_problems,
    probe_environment,
    require_build_host,
)
from pipeline.backends.trtllm_engine.network import network_files
from pipeline.core.atomic import copy_file_atomic, link_or_copy, swap_symlink
from pipeline.core.errors import InputError, StageError
from pipeline.core.reporter import Reporter
from pipeline.core.store import Artifact, ArtifactStore
from pipeline.core.tools import ToolRunner, run_tool
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.facts.targets import TARGETS, Target
from pipeline.planning.memory import ProfilePlan, find_architecture, plan_profile
from pipeline.planning.tasks import ENGINE_STAGES, Task
from pipeline.stages.base import RunOptions, Stage, StageContext, StageOutcome


class BuildRecord(BaseModel):
    """manifest.record of a build artifact."""

    target: str
    precision: str
    profile: dict[str, Any]
    max_num_tokens: int
    engine: EngineInfo
    command: list[str]  # the full trtllm-build argv (empty for cpu-reference: nothing external ran)
    timing_cache: str | None = None  # the output timing cache, relative to the artifact (GPU targets)
    network_files: list[str] = []  # --visualize_network's graph, for viewing (not checkable ONNX)
    plan: ProfilePlan


class Build(Stage):
    """One engine per precision and profile, after the memory plan proves the profile fits."""

    name = "build"
    version = 4
    tools = ("tensorrt-llm", "tensorrt")

    def config_section(self, config: PipelineConfig, task: Task) -> dict[str, Any]:
        return {
            "target": config.target.gpu,
            "profile": config.profile(task.profile).model_dump(mode="json"),
            "build": config.build.model_dump(mode="json"),
            "kv_cache_dtype": config.quantization.kv_cache_dtype,
        }

    def run(self, ctx: StageContext) -> StageOutcome:
        fetched = layout.model_dir(ctx.inputs["fetch"].path)
        checkpoint = layout.checkpoint_dir(ctx.inputs["calibrate"].path)
        plan = plan_profile(
            ctx.config, find_architecture(ctx.config, fetched), ctx.precision, ctx.profile.name
        )
        ctx.log.info("plan: %s", plan.model_dump_json())
        target = TARGETS[ctx.config.target.gpu]
        engine_dir = layout.engine_dir(ctx.out_dir)
        if target.is_gpu:
            record = _build_trtllm_engine(ctx, checkpoint, engine_dir, plan, target)
        else:
            if ctx.config.build.visualize:
                ctx.reporter.warn(
                    f"{ctx.task.id}: build.visualize: cpu-reference has no TensorRT network to export"
                )
            record = _pack_reference_engine(ctx, checkpoint, engine_dir, plan)
        summary = (
            f"{record.engine.runtime} engine: batch {plan.max_batch_size} x {plan.max_seq_len} tokens "
            f"(plan fits {plan.largest_batch}), max_num_tokens {plan.max_num_tokens}"
        )
        return StageOutcome(summary=summary, record=record)

    def after_commit(
        self, config: PipelineConfig, store: ArtifactStore, task: Task, artifact: Artifact, reporter: Reporter
    ) -> None:
        """Link a served engine under engines/ and share the build's timing cache (see the module doc)."""
        record = BuildRecord.model_validate(artifact.manifest.record)
        if not record.plan.gather_context_logits:
            _link_engine(config, store, task, artifact.path, reporter)
        if record.timing_cache is not None:
            target = TARGETS[config.target.gpu]
            shared = layout.timing_cache_path(
                store.work_dir, config.model.name, target, record.engine.tensorrt_version
            )
            _share_timing_cache(artifact.path / record.timing_cache, shared)


# --- GPU targets: trtllm-build ----------------------------------------------------------------


def _check_host(
    env: BuildEnvironment, target: Target, needs: tuple[int, int], disk_path: Path, options: RunOptions
) -> None:
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
        )
    )


def _build_trtllm_engine(
    ctx: StageContext,
    checkpoint: Path,
    engine_dir: Path,
    plan: ProfilePlan,
    target: Target,
) -> BuildRecord:
    # One log per build, next to the task's log so it survives a failed build.
    build_log = ctx.log_path.with_name(f"{ctx.log_path.stem}.{layout.BUILD_LOG}")
    build_log.unlink(missing_ok=True)
    env = probe_environment(build_log, runner=ctx.tools)
    _check_host(env, target, build_needs(plan), ctx.work_dir, ctx.options)
    visualize_dir = layout.network_dir(ctx.out_dir) if ctx.config.build.visualize else None
    gpus = len(env.gpus)
    argv = trtllm_build_argv(
        checkpoint,
        engine_dir,
        ctx.profile,
        ctx.config.build,
        plan,
        layout.timing_cache_path(ctx.work_dir, ctx.config.model.name, target, env.tensorrt),
        ctx.out_dir / layout.TIMING_CACHE,
        workers=min(ctx.config.build.workers or gpus, gpus),  # trtllm-build caps it at the GPU count too
        visualize_dir=visualize_dir,
        executable=env.trtllm_build or "trtllm-build",
    )
    ctx.log.info("$ %s", shlex.join(argv))
    ctx.reporter.info(f"{ctx.task.id}: trtllm-build (log: {build_log})")
    run_tool(argv, stage=ctx.task.stage, log_path=build_log, runner=ctx.tools)
    check_built_engine(
        engine_dir, expected_build_config(ctx.profile, ctx.config.build, plan), stage=ctx.task.stage
    )
    graph = network_files(visualize_dir) if visualize_dir is not None else []
    gpu = env.gpus[0]
    info = EngineInfo(
        runtime="tensorrt-llm",
        target=target.name,
        gpu_name=gpu.name,
        sm=gpu.sm,
        tensorrt_llm_version=env.tensorrt_llm,
        tensorrt_version=env.tensorrt,
        cuda_version=env.cuda,
        torch_version=env.torch,
    )
    write_engine_info(engine_dir, info)
    shutil.copyfile(build_log, ctx.out_dir / layout.BUILD_LOG)
    return BuildRecord(
        target=target.name,
        precision=ctx.precision.value,
        profile=ctx.profile.model_dump(mode="json"),
        max_num_tokens=plan.max_num_tokens,
        engine=info,
        command=argv,
        # trtllm-build asserts it wrote the cache (builder.py build()); without it there is none to share
        timing_cache=layout.TIMING_CACHE if (ctx.out_dir / layout.TIMING_CACHE).is_file() else None,
        network_files=[p.relative_to(ctx.out_dir).as_posix() for p in graph],
        plan=plan,
    )


def fetched_model_dir(config: PipelineConfig, store: ArtifactStore) -> Path | None:
    """The model/ folder of the fetch artifact this config would use, if it is in the store already."""
    from pipeline.execution.driver import fingerprint, key_of
    from pipeline.stages import STAGES

    fetch = Task("fetch")
    if not store.slot(fetch.stage, fetch.variant).is_dir():
        return None  # nothing fetched yet: no need to key the fetch task (and import its module)
    key = key_of(fingerprint(config, fetch, STAGES[fetch.stage], {}))
    artifact = store.get(fetch.stage, fetch.variant, key)
    return layout.model_dir(artifact.path) if artifact is not None else None


def preflight(
    config: PipelineConfig,
    store: ArtifactStore,
    tasks: list[Task],
    options: RunOptions,
    *,
    force: bool = False,
    check_host: bool = True,
    runner: ToolRunner = subprocess.run,
) -> None:
    """Before any stage runs: refuse a profile that cannot fit, and a GPU build this host cannot do
    (no TensorRT-LLM 1.2.1, no GPU of the target's SM, too little RAM or disk), so a run fails in
    seconds rather than after calibration. run() checks both again with the fetched config.json.
    check_host=False: the builds run on other hosts (a Ray cluster), which run() checks."""
    from pipeline.execution.driver import status
    from pipeline.execution.results import TaskState

    builds = [t for t in tasks if t.stage in ENGINE_STAGES]
    if not builds:
        return
    try:
        arch = find_architecture(config, fetched_model_dir(config, store))
    except InputError:
        arch = None  # not known before the fetch
    plans = [plan_profile(config, arch, Precision(t.precision), t.profile) for t in builds] if arch else []
    target = TARGETS[config.target.gpu]
    if not target.is_gpu or not check_host:
        return
    built = {r.task for r in status(config, store, tasks) if r.state is TaskState.up_to_date}
    if not force and all(t in built for t in builds):
        return  # every engine is built already and intact: this host need not be able to build
    env = probe_environment(store.log_path(Build.name, (), "preflight"), runner=runner)
    needs = build_needs(max(plans, key=lambda p: p.weight_bytes)) if plans else (0, 0)
    store.work_dir.mkdir(parents=True, exist_ok=True)
    _check_host(env, target, needs, store.work_dir, options)


# --- cpu-reference: pack and verify the checkpoint -----------------------------------------------


def reference_engine_config(
    checkpoint_config: dict[str, Any], build_config: dict[str, Any]
) -> dict[str, Any]:
    """config.json in TensorRT-LLM's engine shape for the reference runtime."""
    return {
        "version": f"trtllm-pipeline {__version__} (cpu-reference)",
        "pretrained_config": checkpoint_config,
        "build_config": build_config,
    }


def _checkpoint_sha256(ctx: StageContext, name: str) -> str:
    rel = f"{layout.CHECKPOINT}/{name}"
    entry = next((f for f in ctx.inputs["calibrate"].manifest.files if f.path == rel), None)
    if entry is None:
        raise InputError(
            "not in the calibrate manifest", path=ctx.inputs["calibrate"].path / rel, hint="rerun calibrate"
        )
    return entry.sha256


def _pack_reference_engine(
    ctx: StageContext, checkpoint: Path, engine_dir: Path, plan: ProfilePlan
) -> BuildRecord:
    import torch

    from pipeline.backends.runners import load_runner

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
    link_or_copy(weights, engine_dir / REFERENCE_WEIGHTS, _checkpoint_sha256(ctx, REFERENCE_WEIGHTS))
    build_config = expected_build_config(ctx.profile, ctx.config.build, plan)
    engine_config = reference_engine_config(checkpoint_config, build_config)
    (engine_dir / ENGINE_CONFIG).write_text(json.dumps(engine_config, indent=2) + "\n")
    info = EngineInfo(runtime="cpu-reference", target=ctx.config.target.gpu, torch_version=torch.__version__)
    write_engine_info(engine_dir, info)

    # Verify: the packed engine loads on the reference runtime and a short forward is finite.
    runner = load_runner(engine_dir)
    length = min(8, ctx.profile.max_input_len)
    vocab = int(checkpoint_config["vocab_size"])
    (logits,) = runner.context_logits([[i % vocab for i in range(length)]])
    if tuple(logits.shape) != (length, vocab) or not bool(torch.isfinite(logits).all()):
        raise StageError(
            ctx.task.stage,
            f"the packed checkpoint's forward pass gave logits {tuple(logits.shape)}, not finite {(length, vocab)}",
        )
    ctx.log.info("verified: logits %s, finite", tuple(logits.shape))
    return BuildRecord(
        target=ctx.config.target.gpu,
        precision=ctx.precision.value,
        profile=ctx.profile.model_dump(mode="json"),
        max_num_tokens=plan.max_num_tokens,
        engine=info,
        command=[],
        plan=plan,
    )


# --- after the commit (the driver): what builds share -------------------------------------------


def _share_timing_cache(built: Path, shared: Path) -> None:
    """Copy a build's timing cache over the shared one (mtime kept), unless the shared one is as new:
    an up-to-date build's older cache never replaces what a later build wrote."""
    if shared.is_file() and shared.stat().st_mtime_ns >= built.stat().st_mtime_ns:
        return
    copy_file_atomic(built, shared)


def engine_link_owner(link: Path, build_slots: Path) -> Path | None:
    """The folder an existing engines/ link points into, when that is not this work dir's build
    slots (another work dir's store, or anywhere else); None when it is ours or absent."""
    if not link.is_symlink():
        return None
    target = Path(os.path.normpath(link.parent / os.readlink(link)))
    return None if target.is_relative_to(build_slots) else target.parent


def _link_engine(
    config: PipelineConfig, store: ArtifactStore, task: Task, artifact_path: Path, reporter: Reporter
) -> Path | None:
    """engines/<model>/<precision>/<target>/<profile> -> the committed artifact, replaced atomically.

    The link belongs to one work dir: one pointing into another work dir's store is left as it is,
    with a warning (None is returned).
    """
    work_dir = store.work_dir.resolve()
    assert task.precision is not None and task.profile is not None, f"{task.id} is not a build"
    link = layout.engine_link(work_dir, config.model.name, task.precision, config.target.gpu, task.profile)
    if link.exists() and not link.is_symlink():
        raise StageError(Build.name, f"{link} exists and is not a link; move it away")
    owner = engine_link_owner(link, ArtifactStore(work_dir).slot(Build.name, ()))
    if owner is not None:
        reporter.warn(
            f"{task.id}: {link} points into {owner}, another work dir's store; not repointed "
            "(remove the link to hand it to this work dir)"
        )
        return None
    swap_symlink(link, os.path.relpath(artifact_path.resolve(), link.parent))
    return link
