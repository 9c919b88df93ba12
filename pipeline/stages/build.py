"""The build stage: one engine per precision x profile, after the memory plan proves the profile fits.

What an engine is and how it is built is the backend's (pipeline.backends): the
trtllm-engine backend runs `trtllm-build` in a child process after a preflight of
the host; the reference backend packs the calibrated checkpoint into engine/ in
the same layout and verifies it with a forward pass. Either way engine/ holds
build_info.json naming the backend, so every later stage loads it the same way.

After each run of a build, up to date or not, `after_commit` makes
engines/<model>/<backend>/<precision>/<target>/<profile> (next to the work dir) a
relative symlink to the artifact, and lets the backend update what its builds
share (a TensorRT timing cache); a link that points into another work dir's
store is left alone, with a warning. A gate engine (pipeline.stages.gate_engine,
built here too, with context logits) gets no link: it is never served.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from pipeline.backends import backend_of
from pipeline.backends.base import BuildPaths, EngineBuild
from pipeline.core.atomic import swap_symlink
from pipeline.core.errors import InputError, StageError
from pipeline.core.reporter import Reporter
from pipeline.core.store import Artifact, ArtifactStore
from pipeline.core.tools import ToolRunner
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.planning.memory import ProfilePlan, find_architecture, plan_profile
from pipeline.planning.tasks import ENGINE_STAGES, Task
from pipeline.stages.base import RunOptions, Stage, StageContext, StageOutcome


class BuildRecord(EngineBuild):
    """manifest.record of a build artifact: what the backend built and ran, for which profile and plan."""

    target: str
    precision: str
    profile: dict[str, Any]
    max_num_tokens: int
    plan: ProfilePlan


class Build(Stage):
    """One engine per precision and profile, after the memory plan proves the profile fits."""

    name = "build"
    # 5: build_info.json names the backend that built the engine (it named a runtime before).
    # 6: the variant names its backend (the record's plan too).
    version = 6
    tools = ("tensorrt-llm", "tensorrt")

    def config_section(self, config: PipelineConfig, task: Task) -> dict[str, Any]:
        return {
            "target": config.target.gpu,
            "backend": task.backend,
            "profile": config.profile(task.profile).model_dump(mode="json"),
            "build": config.build.model_dump(mode="json"),
            "kv_cache_dtype": config.quantization.kv_cache_dtype,
        }

    def run(self, ctx: StageContext) -> StageOutcome:
        fetched = layout.model_dir(ctx.inputs["fetch"].path)
        paths = BuildPaths(
            checkpoint=layout.checkpoint_dir(ctx.inputs["calibrate"].path),
            out_dir=ctx.out_dir,
            work_dir=ctx.work_dir,
        )
        plan = plan_profile(
            ctx.config,
            find_architecture(ctx.config, fetched),
            ctx.task.backend,
            ctx.precision,
            ctx.profile.name,
        )
        ctx.log.info("plan: %s", plan.model_dump_json())
        built = ctx.backend.build(ctx, paths, plan)
        record = BuildRecord(
            **dict(built),
            target=ctx.config.target.gpu,
            precision=ctx.precision.value,
            profile=ctx.profile.model_dump(mode="json"),
            max_num_tokens=plan.max_num_tokens,
            plan=plan,
        )
        summary = (
            f"{record.engine.backend}: batch {plan.max_batch_size} x {plan.max_seq_len} tokens "
            f"(plan fits {plan.largest_batch}), max_num_tokens {plan.max_num_tokens}"
        )
        return StageOutcome(summary=summary, record=record)

    def after_commit(
        self, config: PipelineConfig, store: ArtifactStore, task: Task, artifact: Artifact, reporter: Reporter
    ) -> None:
        """Link a served engine under engines/ and let the backend update what its builds share (see
        the module doc)."""
        record = BuildRecord.model_validate(artifact.manifest.record)
        if not record.plan.gather_context_logits:
            _link_engine(config, store, task, artifact.path, reporter)
        assert task.backend is not None, f"{task.id} has no backend"
        backend_of(config, task.backend).after_build(config, store.work_dir, artifact.path, record)


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
    """Before any stage runs: refuse a profile that cannot fit, and a host the backend cannot build on
    (trtllm-engine: no TensorRT-LLM 1.2.1, no GPU of the target's SM, too little RAM or disk), so a run
    fails in seconds rather than after calibration. run() checks both again with the fetched
    config.json. check_host=False: the builds run on other hosts (a Ray cluster), which run() checks."""
    from pipeline.execution.driver import status
    from pipeline.execution.results import TaskState

    builds = [t for t in tasks if t.stage in ENGINE_STAGES]
    if not builds:
        return
    try:
        arch = find_architecture(config, fetched_model_dir(config, store))
    except InputError:
        arch = None  # not known before the fetch
    plans = (
        {t: plan_profile(config, arch, t.backend, Precision(t.precision), t.profile) for t in builds}
        if arch
        else {}
    )
    if not check_host:
        return
    done: set[Task] | None = None

    def up_to_date() -> set[Task]:
        nonlocal done
        if done is None:
            done = {r.task for r in status(config, store, tasks) if r.state is TaskState.up_to_date}
        return done

    for backend in dict.fromkeys(t.backend for t in builds):
        assert backend is not None
        own = [t for t in builds if t.backend == backend]
        backend_of(config, backend).preflight(
            config,
            [plans[t] for t in own if t in plans],
            options,
            work_dir=store.work_dir,
            log_path=store.log_path(Build.name, (backend,), "preflight"),
            pending=lambda own=own: force or not all(t in up_to_date() for t in own),
            runner=runner,
        )


# --- after the commit (the driver): the engines/ link --------------------------------------------


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
    """engines/<model>/<backend>/<precision>/<target>/<profile> -> the committed artifact, replaced atomically.

    The link belongs to one work dir: one pointing into another work dir's store is left as it is,
    with a warning (None is returned).
    """
    work_dir = store.work_dir.resolve()
    assert task.backend and task.precision and task.profile, f"{task.id} is not a build"
    link = layout.engine_link(
        work_dir, config.model.name, task.backend, task.precision, config.target.gpu, task.profile
    )
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
