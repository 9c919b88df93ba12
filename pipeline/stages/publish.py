"""The publish stage: a gated engine -> a versioned Triton model repository at the destination.

The artifact (ctx.out_dir/repository) is the rendered repository itself, with
the engine hardlinked from the build artifact; it is then released to
`<publish.destination>/<model>/<backend>/<precision>/<profile>/<version>/` (see
pipeline.serving.release). One repository per precision x profile: the
TensorRT-LLM backend's ensemble refers to its models by fixed names, and each
engine has its own max_batch_size, so variants side by side in one repository
would need renamed copies of all five models; one per variant is also the unit
a deployment rolls out and back.

A PyTorch-backend build (a Hugging Face checkpoint with its LLM API options, no engine) is released
the same way as Triton's llmapi repository and a trtllm-serve bundle over the one checkpoint
(pipeline.serving.pytorch.release).

Every check runs before anything is written at the destination: a failed gate,
an input artifact whose files differ from its manifest, an engine folder
without config.json, an engine built for another target or TensorRT(-LLM)
version, a destination that is a file. Once published, `check_outputs` lets
the executor verify the version against its publish-manifest.json on every
run, so a tampered version is republished rather than taken as up to date.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pipeline.backends.base import EngineInfo, TritonServing, read_engine_info
from pipeline.backends.trtllm_engine.engine import ENGINE_CONFIG, read_engine_config, supports_chunked_context
from pipeline.backends.trtllm_pytorch.options import OPTIONS_FILE as LLM_API_OPTIONS
from pipeline.core.atomic import link_or_copy
from pipeline.core.errors import GateFailedError, InputError
from pipeline.core.hashing import fingerprint_key, sha256_file
from pipeline.core.manifest import MANIFEST_NAME, StatKey, StatRecord, list_files
from pipeline.core.store import Artifact, ArtifactStore
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig
from pipeline.facts.targets import TARGETS
from pipeline.planning.memory import KV_FREE_FRACTION
from pipeline.planning.tasks import Task
from pipeline.runtime.limits import EngineLimits
from pipeline.serving.compat import check_engine_fits
from pipeline.serving.release import check_current, check_destination, check_version, publish_release
from pipeline.serving.release_manifest import (
    RELEASE_MANIFEST,
    EngineRef,
    GateRef,
    ModelRef,
    ReleaseManifest,
    ServingRef,
)
from pipeline.serving.render import RepositoryValues
from pipeline.serving.repository import (
    ENGINE_SUBDIR,
    TOKENIZER_SUBDIR,
    bls_instance_count,
    client_batch_size,
    write_repository,
)
from pipeline.stages.base import Stage, StageContext, StageOutcome
from pipeline.stages.fetch import FetchRecord

M = TypeVar("M", bound=BaseModel)


class PublishRecord(BaseModel):
    destination: str  # the variant's folder: versions and `current` live there
    version: int
    path: str
    created: bool  # False: the same release was already current (a no-op)
    release: ReleaseManifest
    # Each released file's stat once verified: checking the version later needs no hashing, even of
    # a copy (a destination on another filesystem, or another mount of the same one).
    version_stats: dict[str, StatRecord] = {}


class Publish(Stage):
    """A variant's Triton model repository, released as a new version under publish.destination."""

    name = "publish"
    version = 1
    tools = ("tritonclient",)

    def config_section(self, config: PipelineConfig, task: Task) -> dict[str, Any]:
        return {
            "publish": config.publish.model_dump(mode="json"),
            "target": config.target.gpu,
            "backend": task.backend,
            "kv_cache_free_gpu_mem_fraction": KV_FREE_FRACTION,
            # Templates and model code ship in the package: an edit republishes.
            "serving_files": _serving_files_digest(),
        }

    def run(self, ctx: StageContext) -> StageOutcome:
        config = ctx.config
        fetch, build, gate = ctx.inputs["fetch"], ctx.inputs["build"], ctx.inputs["gate"]
        slot = variant_destination(config, ctx.backend.plays, ctx.precision.value, ctx.profile.name)
        check_destination(slot)
        for artifact in (fetch, build, gate):
            _require_intact(artifact)
        gate_report = _check_gate(gate, ctx.task)
        engine_dir = layout.engine_dir(build.path)
        built = read_engine_info(engine_dir)
        serving = ctx.backend.serving(config)
        repository = ctx.out_dir / layout.REPOSITORY
        if (engine_dir / LLM_API_OPTIONS).is_file():
            placed, engine_ref, serving_ref = _pytorch_release(ctx, repository, build, built, serving)
        else:
            placed, engine_ref, serving_ref = _engine_repository(ctx, repository, build, built, serving)
        # The verdict as the gate wrote it: hashed where it lies, against the gate's manifest.
        placed[layout.GATE_JSON] = _files_under(gate, "")[layout.GATE_JSON]
        link_or_copy(gate_report, repository / layout.GATE_JSON, placed[layout.GATE_JSON])
        ctx.known_sha256.update({f"{layout.REPOSITORY}/{rel}": sha for rel, sha in placed.items()})

        fetched = _validated(
            FetchRecord,
            fetch.manifest.record,
            source=fetch.path / MANIFEST_NAME,
            prefix="record.",
            stage="fetch",
        )
        release = ReleaseManifest(
            model=ModelRef(
                name=config.model.name,
                source=config.model.source,
                repo_id=fetched.repo_id or config.model.repo_id,
                commit=fetched.commit,
            ),
            backend=ctx.backend.plays,
            precision=ctx.precision.value,
            profile=ctx.profile.name,
            engine=engine_ref,
            versions=_versions(built),
            serving=serving_ref,
            gate=GateRef(ok=gate.manifest.ok, summary=gate.manifest.summary, key=gate.key),
            files=[f.entry() for f in list_files(repository, placed)],
        )
        (repository / RELEASE_MANIFEST).write_text(release.model_dump_json(indent=2) + "\n")
        published = publish_release(
            repository,
            slot,
            release.files,
            lock_root=config.publish.destination,
            trusted=ctx.trusted,
            on_wait=lambda lock: ctx.reporter.info(
                f"{ctx.task.id}: waiting for another publish holding {lock}"
            ),
        )
        if published.tampered:
            ctx.reporter.warn(
                f"{ctx.task.id}: the version that was current at {slot} fails its {RELEASE_MANIFEST} "
                f"({published.tampered[0]}); published a fresh version"
            )
        state = "new" if published.created else "unchanged, already current"
        ctx.reporter.info(f"{ctx.task.id}: version {published.version} at {published.path} ({state})")
        return StageOutcome(
            summary=f"v{published.version} at {published.path} ({state})",
            record=PublishRecord(
                destination=str(slot),
                version=published.version,
                path=str(published.path),
                created=published.created,
                release=release,
                version_stats=published.stats,
            ),
        )

    def check_outputs(self, artifact: Artifact, trusted: Mapping[StatKey, str]) -> list[str]:
        """The version this artifact published, against its publish-manifest.json (and that manifest
        against the artifact's own copy): what is wrong, one line each."""
        try:
            record = PublishRecord.model_validate(artifact.manifest.record)
        except ValidationError:
            return [f"{artifact.path / MANIFEST_NAME}: record is not a publish record"]
        version = Path(record.path)
        where = f"published version {record.version} at {version}"
        current = check_current(Path(record.destination), record.release.variant)
        if current is not None:
            return [f"{record.destination}: {current}"]
        check = check_version(version, trusted, record.version_stats)
        if not check.ok:
            return [f"{where}: {p}" for p in check.problems]
        ours = artifact.path / layout.REPOSITORY / RELEASE_MANIFEST
        if not ours.is_file() or ours.read_bytes() != (version / RELEASE_MANIFEST).read_bytes():
            return [f"{where}: modified: {RELEASE_MANIFEST}"]
        return []


def _engine_repository(
    ctx: StageContext, repository: Path, build: Artifact, built: EngineInfo, serving: TritonServing
) -> tuple[dict[str, str], EngineRef, ServingRef]:
    """The five-model tensorrtllm repository of an engine (the engine hard-linked into it)."""
    config = ctx.config
    engine_dir = layout.engine_dir(build.path)
    engine_config = read_engine_config(engine_dir)
    # What the serving config must agree with (the rest of build_config is the engine's business).
    limits = EngineLimits.of_engine(engine_config, source=engine_dir / ENGINE_CONFIG)
    check_engine_fits(
        str(engine_dir),
        built,
        engine_config.get("version"),
        target=TARGETS[config.target.gpu],
        container=serving.container,
    )
    decoupled = config.publish.decoupled
    values = RepositoryValues(
        triton_max_batch_size=client_batch_size(limits.max_batch_size, decoupled=decoupled),
        triton_backend=serving.triton_backend,
        engine_dir=serving.engine_dir,
        tokenizer_dir=TOKENIZER_SUBDIR,
        decoupled_mode=decoupled,
        # The plan's KV budget assumes this fraction; serving with another voids its proof.
        kv_cache_free_gpu_mem_fraction=KV_FREE_FRACTION,
        max_queue_delay_microseconds=config.publish.max_queue_delay_microseconds,
        enable_kv_cache_reuse=config.publish.enable_kv_cache_reuse,
        # Only where the engine can chunk a prompt (not with an INT8 KV cache: no paged context FMHA).
        enable_chunked_context=config.publish.enable_chunked_context
        and supports_chunked_context(engine_config),
        preprocessing_instance_count=config.publish.preprocessing_instances,
        postprocessing_instance_count=config.publish.postprocessing_instances,
        bls_instance_count=bls_instance_count(limits.max_batch_size, decoupled=decoupled),
    )
    placed = write_repository(
        repository,
        values,
        engine_dir=engine_dir,
        engine_sha256=_files_under(build, layout.ENGINE),
        tokenizer_dir=layout.model_dir(ctx.inputs["fetch"].path),
        tokenizer_sha256=_files_under(ctx.inputs["fetch"], layout.MODEL),
    )
    engine_ref = EngineRef(target=built.target, sm=built.sm, **asdict(limits), path=ENGINE_SUBDIR)
    serving_ref = ServingRef(
        serve_with=serving.serve_with,
        triton_backend=values.triton_backend,
        decoupled=values.decoupled_mode,
        batching_strategy=values.batching_strategy,
        kv_cache_free_gpu_mem_fraction=values.kv_cache_free_gpu_mem_fraction,
        triton_max_batch_size=values.triton_max_batch_size,
        gpt_model_path=values.engine_dir,
        mount_path=serving.mount_path,
    )
    return placed, engine_ref, serving_ref


def _pytorch_release(
    ctx: StageContext, repository: Path, build: Artifact, built: EngineInfo, serving: TritonServing
) -> tuple[dict[str, str], EngineRef, ServingRef]:
    """A PyTorch-backend build (a Hugging Face checkpoint and its LLM API options) as Triton's llmapi
    repository and a trtllm-serve bundle over the one checkpoint (pipeline.serving.pytorch.release)."""
    from pipeline.serving.pytorch.llm import read_options
    from pipeline.serving.pytorch.release import read_command, write_release

    config = ctx.config
    engine_dir = layout.engine_dir(build.path)
    # No engine: only the TensorRT-LLM version that loaded the options, and the target, must match.
    check_engine_fits(
        str(engine_dir), built, None, target=TARGETS[config.target.gpu], container=serving.container
    )
    options = read_options(engine_dir / LLM_API_OPTIONS)
    # The options reach both consumers through their own files; build_info.json stays with the checkpoint,
    # as with an engine, naming what built it and for which target.
    checkpoint = layout.released_checkpoint(_files_under(build, layout.ENGINE))
    placed = write_release(
        repository,
        model=config.model.name,
        checkpoint_dir=engine_dir,
        checkpoint_sha256=checkpoint,
        tokenizer_dir=layout.model_dir(ctx.inputs["fetch"].path),
        tokenizer_sha256=_files_under(ctx.inputs["fetch"], layout.MODEL),
        options=options,
        mount_path=serving.mount_path,
        decoupled=config.publish.decoupled,
    )
    limits = EngineLimits(
        max_batch_size=options["max_batch_size"],
        max_input_len=ctx.profile.max_input_len,
        max_seq_len=options["max_seq_len"],
    )
    engine_ref = EngineRef(
        target=built.target,
        sm=built.sm,
        **asdict(limits),
        path=str(layout.served_checkpoint_dir(Path(), config.model.name)),
    )
    serving_ref = ServingRef(
        serve_with=serving.serve_with,
        triton_backend="python",
        decoupled=config.publish.decoupled,
        batching_strategy=None,
        kv_cache_free_gpu_mem_fraction=options["kv_cache_config"]["free_gpu_memory_fraction"],
        triton_max_batch_size=0,
        gpt_model_path=serving.engine_dir,
        mount_path=serving.mount_path,
        llmapi_repository=layout.LLMAPI_REPOSITORY,
        trtllm_serve=read_command(repository)["argv"],
    )
    return placed, engine_ref, serving_ref


def _serving_files_digest() -> str:
    root = resources.files("pipeline.serving")
    digests = {}
    for folder in ("templates", "models"):
        base = Path(str(root.joinpath(folder)))
        for path in sorted(base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digests[path.relative_to(base.parent).as_posix()] = sha256_file(path)
    return fingerprint_key(digests)


def variant_destination(config: PipelineConfig, backend: str, precision: str, profile: str) -> Path:
    """The folder whose numbered versions (and `current`) hold one variant's repository."""
    return config.publish.destination / config.model.name / backend / precision / profile


def _check_gate(gate: Artifact, task: Task) -> Path:
    """The gate report, if the gate passed. The executor blocks a failed gate too; this holds without it."""
    if not gate.manifest.ok:
        raise GateFailedError(
            f"{task.id}: the accuracy gate did not pass ({gate.manifest.summary}); nothing published",
            hint=f"see {gate.path / layout.GATE_MD}",
        )
    report = gate.path / layout.GATE_JSON
    if not report.is_file():
        raise InputError(
            f"gate artifact has no {layout.GATE_JSON}", path=gate.path, hint="rerun the gate (--force)"
        )
    return report


def _versions(info: EngineInfo) -> dict[str, str]:
    found = {
        "tensorrt_llm": info.tensorrt_llm_version,
        "tensorrt": info.tensorrt_version,
        "cuda": info.cuda_version,
        "torch": info.torch_version,
    }
    return {name: version for name, version in found.items() if version is not None}


def _require_intact(artifact: Artifact) -> None:
    """Refuse an input whose files differ from its manifest. The executor checks (and rebuilds) inputs
    before a stage runs; this holds without it, and against a change made since."""
    check = ArtifactStore.check(artifact)
    if not check.ok:
        raise InputError(
            f"the {artifact.manifest.stage} artifact differs from its manifest: {check.summary()}",
            path=artifact.path,
            hint=f"`trtllm-pipeline run` sets it aside and rebuilds it (or rerun {artifact.manifest.stage} --force)",
        )


def _files_under(artifact: Artifact, folder: str) -> dict[str, str]:
    """sha256 of every file of the (verified) artifact's manifest under folder ("": all), by path in it."""
    prefix = f"{folder}/" if folder else ""
    return {e.path[len(prefix) :]: e.sha256 for e in artifact.manifest.files if e.path.startswith(prefix)}


def _validated(model: type[M], data: Any, *, source: Path, prefix: str, stage: str) -> M:
    """data as `model`, or one line naming the file, the field and the stage to rerun."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InputError(
            f"{prefix}{field}: {err['msg']}", path=source, hint=f"rerun {stage} (--force)"
        ) from None
