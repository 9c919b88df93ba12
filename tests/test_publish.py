"""publish: a gated engine -> a versioned Triton model repository; every refusal is one line and writes nothing."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from string import Template

import pytest
from google.protobuf import text_format
from publish_upstream import (
    ON_A100,
    REPO_ROOT,
    Upstream,
    a100_engine_info,
    config_with,
    publish_in_process,
    run_publish,
)
from tritonclient.grpc import model_config_pb2

from pipeline.core import atomic
from pipeline.core.atomic import link_or_copy
from pipeline.core.errors import DiskSpaceError, GateFailedError, InputError, StageError
from pipeline.core.hashing import sha256_file
from pipeline.core.manifest import FileEntry
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.results import TaskState
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.planning.memory import KV_FREE_FRACTION
from pipeline.serving import release
from pipeline.serving.models import tensornames
from pipeline.serving.release import check_version
from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest
from pipeline.serving.render import MODEL_NAMES, RepositoryValues, render_config, template_text
from pipeline.stages.base import StageContext
from pipeline.stages.publish import Publish


def parse(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def param(config: model_config_pb2.ModelConfig, key: str) -> str:
    return config.parameters[key].string_value


def slot_of(config, profile: str = "latency") -> Path:
    return config.publish.destination.joinpath("tiny-mistral", "trtllm-engine", "int8_sq", profile)


def result_of(report, stage: str):
    return next(r for r in report.results if r.task.stage == stage)


@pytest.mark.parametrize("profile, batch", [("latency", 1), ("throughput", 8)])
def test_publishes_an_inflight_batching_repository_for_the_variant(tmp_path, profile, batch):
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream(), profile=profile)
    assert report.error is None, report.error
    slot = slot_of(config, profile)
    version = slot / "1"
    assert os.readlink(slot / "current") == "1"
    assert sorted(p.name for p in version.iterdir() if p.is_dir()) == sorted(MODEL_NAMES)
    for name in MODEL_NAMES:  # Triton loads no model without a version folder, the ensemble's included
        assert (version / name / "1").is_dir(), name

    configs = {name: parse(version / name / "config.pbtxt") for name in MODEL_NAMES}
    for name, model in configs.items():
        assert model.name == name
        assert model.max_batch_size == batch  # the engine's build-time max_batch_size, for every model
        assert "${" not in (version / name / "config.pbtxt").read_text()
    engine = configs["tensorrt_llm"]
    assert engine.backend == "python"  # the reference runtime behind the backend's interface
    assert engine.model_transaction_policy.decoupled is True
    assert param(engine, "gpt_model_type") == "inflight_fused_batching"
    assert float(param(engine, "kv_cache_free_gpu_mem_fraction")) == KV_FREE_FRACTION
    assert param(engine, "gpt_model_path") == "tensorrt_llm/1/engine"
    assert (version / "tensorrt_llm/1/engine/rank0.safetensors").is_file()
    assert (version / "tensorrt_llm/1/model.py").is_file()
    assert configs["ensemble"].platform == "ensemble"
    assert [s.model_name for s in configs["ensemble"].ensemble_scheduling.step] == [
        "preprocessing",
        "tensorrt_llm",
        "postprocessing",
    ]
    assert param(configs["preprocessing"], "tokenizer_dir") == "preprocessing/tokenizer"
    assert (version / "preprocessing/tokenizer/tokenizer_config.json").is_file()

    manifest = ReleaseManifest.model_validate_json((version / RELEASE_MANIFEST).read_text())
    assert (manifest.precision, manifest.profile) == ("int8_sq", profile)
    assert manifest.model.name == "tiny-mistral" and manifest.model.commit == "0" * 40
    assert (manifest.engine.target, manifest.engine.sm, manifest.engine.max_batch_size) == (
        "cpu",
        None,
        batch,
    )
    assert manifest.versions == {"torch": "2.13.0"}
    assert manifest.gate.ok is True
    assert manifest.serving.serve_with.startswith("nvidia-pytriton")
    on_disk = sorted(
        p.relative_to(version).as_posix()
        for p in version.rglob("*")
        if p.is_file() and p.name != RELEASE_MANIFEST
    )
    assert [f.path for f in manifest.files] == on_disk  # every file, and only those
    assert release.check_version(version).ok  # with its sha256 and size, and nothing else

    record = result_of(report, "publish")
    stored = ArtifactStore(tmp_path / "work").get(
        "publish", ("trtllm-engine", "int8_sq", profile), record.key
    )
    assert stored.manifest.record["version"] == 1 and stored.manifest.record["created"] is True


def test_engine_is_hardlinked_from_the_build_on_one_filesystem(tmp_path):
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream())
    built = result_of(report, "build").path / "engine" / "rank0.safetensors"
    published = slot_of(config) / "1" / "tensorrt_llm/1/engine/rank0.safetensors"
    assert published.stat().st_ino == built.stat().st_ino


def test_engine_is_copied_and_verified_across_filesystems(tmp_path, monkeypatch):
    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(atomic.os, "link", cross_device)
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream())
    assert report.error is None, report.error
    built = result_of(report, "build").path / "engine" / "rank0.safetensors"
    published = slot_of(config) / "1" / "tensorrt_llm/1/engine/rank0.safetensors"
    assert published.stat().st_ino != built.stat().st_ino
    assert published.read_bytes() == built.read_bytes()


def test_a_copy_that_differs_from_its_checksum_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    with pytest.raises(InputError, match="expected 000000000000"):
        link_or_copy(src, tmp_path / "out" / "dst.bin", "0" * 64)
    assert not (tmp_path / "out" / "dst.bin").exists()


def test_republishing_the_same_artifacts_is_a_noop_and_a_change_adds_a_version(tmp_path):
    config = config_with(tmp_path)
    work = tmp_path / "work"
    assert run_publish(config, work, Upstream()).error is None
    slot = slot_of(config)
    first = (slot / "1" / RELEASE_MANIFEST).read_bytes()

    again = run_publish(config, work, Upstream(), force=True)  # the stage reruns; the release is the same
    assert again.error is None and result_of(again, "publish").state is TaskState.ran
    assert release.versions(slot) == [1] and os.readlink(slot / "current") == "1"
    assert "unchanged" in result_of(again, "publish").summary

    changed = config_with(
        tmp_path, **{'destination = "': 'max_queue_delay_microseconds = 500\ndestination = "'}
    )
    assert run_publish(changed, work, Upstream()).error is None
    assert release.versions(slot) == [1, 2] and os.readlink(slot / "current") == "2"
    assert (slot / "1" / RELEASE_MANIFEST).read_bytes() == first  # the old version is untouched
    delay = parse(slot / "2" / "tensorrt_llm" / "config.pbtxt").dynamic_batching.max_queue_delay_microseconds
    assert delay == 500


def test_an_interrupted_release_adds_no_version_and_leaves_current(tmp_path, monkeypatch):
    config = config_with(tmp_path)
    work = tmp_path / "work"
    assert run_publish(config, work, Upstream()).error is None
    calls = []

    def failing_place(src, dst, sha256):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return link_or_copy(src, dst, sha256)

    monkeypatch.setattr(release, "link_or_copy", failing_place)
    changed = config_with(
        tmp_path, **{'destination = "': 'max_queue_delay_microseconds = 7\ndestination = "'}
    )
    failed = run_publish(changed, work, Upstream())  # a full disk is the step's typed error (exit 5)
    assert isinstance(failed.error, DiskSpaceError) and "no space left" in failed.error.message
    slot = slot_of(config)
    assert release.versions(slot) == [1]
    assert os.readlink(slot / "current") == "1"
    assert sorted(p.name for p in slot.iterdir()) == ["1", "current"]  # no half version left behind


def _drop_engine_config(engine: Path) -> None:
    (engine / "config.json").unlink()


def _drop_max_batch_size(engine: Path) -> None:
    path = engine / "config.json"
    config = json.loads(path.read_text())
    del config["build_config"]["max_batch_size"]
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop_engine_config, "no engine config.json"),
        (_drop_max_batch_size, "config.json: build_config.max_batch_size: Field required"),
    ],
    ids=["engine-without-config-json", "engine-config-without-limit"],
)
def test_a_bad_build_artifact_is_refused_in_one_line_and_nothing_is_published(tmp_path, edit, message):
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream(engine_edit=edit))
    assert isinstance(report.error, InputError)
    assert message in report.error.message and "\n" not in report.error.message
    assert not config.publish.destination.exists()


def publish_context(config, work: Path, report, out: Path) -> StageContext:
    """The publish stage's context for a report's inputs, to call the stage without the executor."""
    store = ArtifactStore(work)
    inputs = {
        r.task.stage: store.get(r.task.stage, r.task.variant, r.key)
        for r in report.results
        if r.task.stage in ("fetch", "build", "gate")
    }
    out.mkdir()
    return StageContext(
        config=config,
        task=result_of(report, "publish").task,
        inputs=inputs,
        out_dir=out,
        work_dir=work,
        log=logging.getLogger("test"),
        log_path=out.with_name("log"),
        reporter=RecordingReporter(),
    )


def _rewrite_weights(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    os.unlink(path)  # a fresh inode, as an editor that saves by rename does
    path.write_bytes(bytes(data))


def _edit_weights_in_place(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("tamper", [_rewrite_weights, _edit_weights_in_place], ids=["replaced", "in-place"])
@pytest.mark.parametrize(
    "stage, file", [("build", "engine/rank0.safetensors"), ("gate", "gate.json")], ids=["engine", "verdict"]
)
def test_publish_refuses_an_input_that_fails_its_manifest(tmp_path, tamper, stage, file):
    """The executor rebuilds a modified input first; the stage holds the line without it."""
    config = config_with(tmp_path)
    work = tmp_path / "work"
    report = run_publish(config, work, Upstream())
    shutil.rmtree(config.publish.destination)
    tamper(result_of(report, stage).path / file)
    with pytest.raises(InputError) as info:
        Publish().run(publish_context(config, work, report, tmp_path / "out"))
    assert f"the {stage} artifact differs from its manifest: modified: {file}" in str(info.value)
    assert not config.publish.destination.exists()


def test_a_destination_that_is_a_file_is_refused(tmp_path):
    config = config_with(tmp_path)
    config.publish.destination.write_text("not a folder")
    report = run_publish(config, tmp_path / "work", Upstream())
    assert isinstance(report.error, InputError)
    assert "destination is a file" in report.error.message and "\n" not in report.error.message
    assert config.publish.destination.read_text() == "not a folder"


def test_a_failed_gate_blocks_publish(tmp_path):
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream(gate_ok=False))
    assert result_of(report, "gate").state is TaskState.rejected
    assert result_of(report, "publish").state is TaskState.blocked
    assert not config.publish.destination.exists()


def test_publish_itself_refuses_a_failed_gate(tmp_path):
    """The executor blocks a rejected gate; the stage holds the line even when called directly."""
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream(gate_ok=False))
    ctx = publish_context(config, tmp_path / "work", report, tmp_path / "out")
    with pytest.raises(GateFailedError, match="accuracy gate did not pass"):
        Publish().run(ctx)
    assert not config.publish.destination.exists()


@pytest.mark.parametrize(
    "info, message",
    [
        (a100_engine_info(), "built for target 'a100-40gb', but the config's target is 'cpu'"),
    ],
)
def test_an_engine_built_for_another_target_is_refused(tmp_path, info, message):
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream(engine_info=info))
    assert isinstance(report.error, InputError) and message in report.error.message
    assert not config.publish.destination.exists()


def test_gpu_repository_serves_the_engine_with_the_tensorrtllm_backend(tmp_path):
    config = config_with(tmp_path, **ON_A100)
    report = run_publish(
        config, tmp_path / "work", Upstream(engine_info=a100_engine_info()), profile="throughput"
    )
    assert report.error is None, report.error
    version = slot_of(config, "throughput") / "1"
    engine = parse(version / "tensorrt_llm" / "config.pbtxt")
    assert engine.backend == "tensorrtllm"
    assert engine.max_batch_size == 8
    assert param(engine, "gpt_model_path") == "/models/tensorrt_llm/1/engine"  # where the container mounts it
    assert param(engine, "gpt_model_type") == "inflight_fused_batching"
    assert not (version / "tensorrt_llm/1/model.py").exists()  # the C++ backend, not the CPU stand-in
    assert (version / "tensorrt_llm/1/engine/rank0.engine").is_file()
    manifest = ReleaseManifest.model_validate_json((version / RELEASE_MANIFEST).read_text())
    assert manifest.serving.serve_with == SERVING_CONTAINER.tag
    assert manifest.engine.sm == 80
    assert manifest.versions["tensorrt_llm"] == "1.2.1" and manifest.versions["tensorrt"] == "10.14.1.48"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sm": 86, "gpu_name": "NVIDIA A10G"}, "built for sm86, but target 'a100-40gb' is sm80"),
        ({"tensorrt_version": "10.13.0.35"}, "built with tensorrt 10.13.0.35, but nvcr.io"),
        ({"tensorrt_llm_version": "1.1.0"}, "built with tensorrt_llm 1.1.0, but nvcr.io"),
        ({"tensorrt_version": None}, "records no tensorrt version"),
    ],
    ids=["sm", "tensorrt", "tensorrt-llm", "unrecorded"],
)
def test_an_engine_that_would_not_load_in_the_container_is_refused(tmp_path, changes, message):
    config = config_with(tmp_path, **ON_A100)
    report = run_publish(config, tmp_path / "work", Upstream(engine_info=a100_engine_info(**changes)))
    assert isinstance(report.error, InputError)
    assert message in report.error.message and "\n" not in report.error.message
    assert not config.publish.destination.exists()


def test_an_unknown_serving_container_is_refused(tmp_path):
    config = config_with(
        tmp_path, **ON_A100, **{'destination = "': 'container = "my/triton:latest"\ndestination = "'}
    )
    report = run_publish(config, tmp_path / "work", Upstream(engine_info=a100_engine_info()))
    assert isinstance(report.error, InputError) and "my/triton:latest" in report.error.message
    assert not config.publish.destination.exists()


def values(**changes) -> RepositoryValues:
    base = dict(
        triton_max_batch_size=4,
        triton_backend="python",
        engine_dir="tensorrt_llm/1/engine",
        tokenizer_dir="preprocessing/tokenizer",
        decoupled_mode=True,
        kv_cache_free_gpu_mem_fraction=0.9,
        max_queue_delay_microseconds=100,
        enable_kv_cache_reuse=False,
        enable_chunked_context=True,
        preprocessing_instance_count=1,
        postprocessing_instance_count=1,
    )
    return RepositoryValues(**{**base, **changes})


def test_every_template_placeholder_is_a_typed_value():
    names = set(RepositoryValues.model_fields)
    for model in MODEL_NAMES:
        rendered = render_config(model, values())
        assert "$" not in rendered
        text = template_text(model)
        used = {m.group("braced") for m in Template.pattern.finditer(text) if m.group("braced")}
        assert used <= names, f"{model}: {used - names}"


def test_a_placeholder_without_a_value_is_an_error_not_a_silent_default():
    template = template_text("tensorrt_llm").replace("${max_beam_width}", "${max_beam_widht}")
    with pytest.raises(StageError, match=r"needs \$\{max_beam_widht\}"):
        render_config("tensorrt_llm", values(), template=template)


def test_a_rendered_config_outside_tritons_schema_is_refused():
    template = template_text("ensemble").replace('platform: "ensemble"', 'platfrom: "ensemble"')
    with pytest.raises(StageError, match="not a valid Triton model config"):
        render_config("ensemble", values(), template=template)
    template = template_text("preprocessing").replace("kind: KIND_CPU", "kind: KIND_TPU")
    with pytest.raises(StageError, match="not a valid Triton model config"):
        render_config("preprocessing", values(), template=template)


def test_decoupled_mode_follows_the_config():
    rendered = render_config("tensorrt_llm", values(decoupled_mode=False))
    config = model_config_pb2.ModelConfig()
    text_format.Parse(rendered, config)
    assert config.model_transaction_policy.decoupled is False


def test_release_manifest_files_match_what_is_released(tmp_path):
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "a" / "x.txt").write_text("x")
    (source / RELEASE_MANIFEST).write_text("{}")
    files = [FileEntry(path="a/x.txt", sha256=sha256_file(source / "a" / "x.txt"), size=1)]
    first = release.publish_release(source, tmp_path / "slot", files, lock_root=tmp_path)
    assert (first.version, first.created) == (1, True)
    assert json.loads((first.path / RELEASE_MANIFEST).read_text()) == {}
    assert (first.path / "a" / "x.txt").read_text() == "x"


def test_a_copy_to_the_destination_that_fails_verification_leaves_nothing_there(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    real_sha256 = atomic.sha256_and_stat
    monkeypatch.setattr(
        atomic,
        "sha256_and_stat",
        lambda p: ("f" * 64, os.stat(p)) if "published" in str(p) else real_sha256(p),
    )
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream())
    assert isinstance(report.error, InputError) and "expected" in report.error.message
    # Only the destination's lock (it coordinates publishers; removing it would race a waiting one).
    assert [p.name for p in config.publish.destination.iterdir()] == [".lock"]


# --- publishes at once (several executors, or the Ray executor's workers, publishing to one place) ---


def _publish_at_once(jobs: list[tuple[Path, Path, str]]) -> dict[str, tuple]:
    """Each (config file, work dir, profile) published up to publish in a process of its own, all at
    once (tests/publish_upstream.py publish_in_process); each one's (error, version, created, messages)."""
    import multiprocessing

    mp = multiprocessing.get_context("spawn")
    waiting, results = mp.Event(), mp.Queue()
    processes = [
        mp.Process(target=publish_in_process, args=(str(config), str(work), profile, waiting, results))
        for config, work, profile in jobs
    ]
    try:
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    return {work: tuple(rest) for work, *rest in outcomes}


def test_two_variants_published_at_once_from_two_processes_both_land_whole(tmp_path):
    config = config_with(tmp_path)
    jobs = [(tmp_path / "pipeline.toml", tmp_path / f"work-{p}", p) for p in ("latency", "throughput")]
    outcomes = _publish_at_once(jobs)
    assert [o[:3] for o in outcomes.values()] == [(None, 1, True), (None, 1, True)]
    assert sum("waiting for another publish" in o[3] for o in outcomes.values()) == 1  # they contended
    for profile in ("latency", "throughput"):
        slot = slot_of(config, profile)
        assert release.versions(slot) == [1] and os.readlink(slot / "current") == "1"
        assert release.check_version(slot / "1").ok
        assert (
            ReleaseManifest.model_validate_json((slot / "1" / RELEASE_MANIFEST).read_text()).profile
            == profile
        )
    assert not list(config.publish.destination.rglob(".tmp-*"))


def test_one_variant_published_at_once_from_three_processes_gets_one_whole_version_per_release(tmp_path):
    """Two processes publish the same release, a third another one, all at once: whatever the order,
    an unchanged release adds no version, every version is whole, `current` is the newest, and each
    publish's record names a version that holds its own release."""
    config = config_with(tmp_path)
    same = tmp_path / "pipeline.toml"
    other = tmp_path / "other.toml"
    other.write_text(
        same.read_text().replace('destination = "', 'max_queue_delay_microseconds = 500\ndestination = "')
    )
    jobs = [(same, tmp_path / "work-a", "latency"), (same, tmp_path / "work-b", "latency")]
    outcomes = _publish_at_once([*jobs, (other, tmp_path / "work-c", "latency")])
    assert [o[0] for o in outcomes.values()] == [None] * 3
    slot = slot_of(config)
    found = release.versions(slot)
    assert found == sorted(o[1] for o in outcomes.values() if o[2]) == list(range(1, len(found) + 1))
    assert len(found) in (2, 3) and os.readlink(slot / "current") == str(found[-1])
    assert all(release.check_version(slot / str(v)).ok for v in found)
    manifests = [(slot / str(v) / RELEASE_MANIFEST).read_bytes() for v in found]
    assert all(a != b for a, b in zip(manifests, manifests[1:], strict=False))
    for work in outcomes:
        artifact = ArtifactStore(Path(work)).latest("publish", ("trtllm-engine", "int8_sq", "latency"))
        assert artifact is not None and Publish().check_outputs(artifact, {}) == []
    assert sum("waiting for another publish" in o[3] for o in outcomes.values()) >= 1  # they contended


# --- the contract with the TensorRT-LLM 1.2 Triton backend (read in its source; cited per fact) ---

# Read with ModelState::GetParameter and no try/catch, so a config without one fails the model load
# ("Cannot find parameter with name: ..."): getBatchingTypeFromParams (gpt_model_type) and
# getGuidedDecodingConfigFromParams (the other three), in
# triton_backend/inflight_batcher_llm/src/model_instance_state.cc at NVIDIA/TensorRT-LLM 0c8de69a1ca6
# (tensorrt_llm/version.py there: 1.2.0rc8). Every other parameter it reads, and every one model_state.cc
# reads (at 5cdd69218f88), sits in a try/catch with a default. The lookahead_* parameters are required
# only with decoding_mode "lookahead", which the templates never set.
BACKEND_REQUIRED_PARAMETERS = (
    "gpt_model_type",
    "tokenizer_dir",
    "xgrammar_tokenizer_info_path",
    "guided_decoding_backend",
)
GPU_VALUES = {"triton_backend": "tensorrtllm", "engine_dir": "/models/tensorrt_llm/1/engine"}


def parsed(model: str, **changes) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(render_config(model, values(**changes)), config)
    return config


def test_the_engine_model_carries_every_parameter_the_backend_reads_without_a_default():
    engine = parsed("tensorrt_llm", **GPU_VALUES)
    assert [key for key in BACKEND_REQUIRED_PARAMETERS if key not in engine.parameters] == []
    for key in ("tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"):
        assert param(engine, key) == ""  # guided decoding off: the backend returns no config for ""
    assert param(engine, "gpt_model_type") == "inflight_fused_batching"


def test_the_ensemble_feeds_the_engine_model_only_by_names_it_declares():
    """Its names are the backend's own declarations (tests/test_upstream_interface.py)."""
    engine = parsed("tensorrt_llm", **GPU_VALUES)
    (step,) = [s for s in parsed("ensemble").ensemble_scheduling.step if s.model_name == "tensorrt_llm"]
    assert set(step.input_map) - {i.name for i in engine.input} == set()
    assert set(step.output_map) - {o.name for o in engine.output} == set()


# --- the templates spell their tensor names; pipeline/serving/models/tensornames.py is their one home ---


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_each_template_declares_exactly_the_tensors_the_names_module_lists(model):
    inputs, outputs = tensornames.INTERFACES[model]
    config = parsed(model)
    assert sorted(i.name for i in config.input) == sorted(inputs)
    assert sorted(o.name for o in config.output) == sorted(outputs)


def test_the_ensemble_wires_its_steps_as_the_names_module_says():
    """The BLS model wires a request with the module's maps; the ensemble's steps must agree."""
    config = parsed("ensemble")
    steps = config.ensemble_scheduling.step
    source = {i.name: ("ensemble", i.name) for i in config.input}  # an ensemble tensor -> who writes it
    for step in steps:
        source |= {tensor: (step.model_name, name) for name, tensor in step.output_map.items()}
    wiring: dict[tuple[str, str], dict[str, str]] = {}
    for step in steps:
        for name, tensor in step.input_map.items():
            model, written = source[tensor]
            wiring.setdefault((model, step.model_name), {})[written] = name
    for output in config.output:
        model, written = source[output.name]
        wiring.setdefault((model, "ensemble"), {})[written] = output.name
    assert wiring == {
        ("ensemble", "preprocessing"): tensornames.TEXT_TO_PREPROCESSING,
        ("preprocessing", "tensorrt_llm"): tensornames.PREPROCESSING_TO_ENGINE,
        ("ensemble", "tensorrt_llm"): tensornames.TEXT_TO_ENGINE,
        ("tensorrt_llm", "postprocessing"): tensornames.ENGINE_TO_POSTPROCESSING,
        ("postprocessing", "ensemble"): {tensornames.Postprocessing.OUTPUT: tensornames.Text.TEXT_OUTPUT},
        ("tensorrt_llm", "ensemble"): tensornames.ENGINE_TO_TEXT,
    }


def test_a_new_mount_path_is_a_new_version_that_differs_only_in_gpt_model_path(tmp_path):
    """gpt_model_path is absolute (the backend reports a wrong one only as "paths are empty"): the
    manifest names the mount point, and a different one republishes that one parameter."""
    work, upstream = tmp_path / "work", Upstream(engine_info=a100_engine_info())
    assert run_publish(config_with(tmp_path, **ON_A100), work, upstream).error is None
    moved = config_with(
        tmp_path, **ON_A100, **{'destination = "': 'mount_path = "/srv/triton"\ndestination = "'}
    )
    report = run_publish(moved, work, upstream)
    assert report.error is None, report.error
    assert result_of(report, "build").state is TaskState.up_to_date  # nothing but publish reruns
    slot = slot_of(moved)
    assert release.versions(slot) == [1, 2]
    old, new = (ReleaseManifest.model_validate_json((slot / v / RELEASE_MANIFEST).read_text()) for v in "12")
    assert (old.serving.mount_path, new.serving.mount_path) == ("/models", "/srv/triton")
    before, after = ({f.path: f.sha256 for f in m.files} for m in (old, new))
    assert [path for path in after if after[path] != before.get(path)] == ["tensorrt_llm/config.pbtxt"]
    first, second = ((slot / v / "tensorrt_llm/config.pbtxt").read_text().splitlines() for v in "12")
    assert [(a, b) for a, b in zip(first, second, strict=True) if a != b] == [
        (
            'parameters { key: "gpt_model_path", value: { string_value: "/models/tensorrt_llm/1/engine" } }',
            'parameters { key: "gpt_model_path", value: { string_value: "/srv/triton/tensorrt_llm/1/engine" } }',
        )
    ]


def test_cli_publish_mount_path_replaces_the_configs(tmp_path, monkeypatch):
    from pipeline.cli import main
    from pipeline.commands import run

    config_with(tmp_path)
    (tmp_path / "calib_data").symlink_to(REPO_ROOT / "calib_data")  # the stages' input files
    seen = []

    def stop_here(config, *args, **kwargs):
        seen.append(config.publish.mount_path)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "execute", stop_here)
    argv = ["publish", "--config", str(tmp_path / "pipeline.toml"), "--work-dir", str(tmp_path / "work")]
    main([*argv, "--mount-path", "/srv/triton"])
    assert seen == ["/srv/triton"]


def test_cli_publish_refuses_a_relative_mount_path_in_one_line(tmp_path, capsys):
    from pipeline.cli import main

    config_with(tmp_path, **ON_A100)
    argv = ["publish", "--config", str(tmp_path / "pipeline.toml"), "--mount-path", "models"]
    assert main([*argv, "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "--mount-path models: String should match pattern" in err and "Traceback" not in err


def test_without_decoupled_mode_clients_send_one_prompt_and_bls_gets_an_instance_per_slot(tmp_path):
    """The backend refuses a batch above 1 unless decoupled ("Batch size > 1 requires the tensorrt_llm
    backend to be using decoupled transaction policy", utils.cc createRequestsFromInputTensors at
    NVIDIA/TensorRT-LLM 192908136e53); a BLS execute then blocks per generation, so it gets one
    instance per engine batch slot (docs/model_config.md, bls_instance_count, tensorrtllm_backend 98bfe1d)."""
    config = config_with(tmp_path, **{'destination = "': 'decoupled = false\ndestination = "'})
    report = run_publish(config, tmp_path / "work", Upstream(), profile="throughput")
    assert report.error is None, report.error
    version = slot_of(config, "throughput") / "1"
    configs = {name: parse(version / name / "config.pbtxt") for name in MODEL_NAMES}
    assert {name: c.max_batch_size for name, c in configs.items()} == dict.fromkeys(MODEL_NAMES, 1)
    assert configs["tensorrt_llm"].model_transaction_policy.decoupled is False
    assert [g.count for g in configs["tensorrt_llm_bls"].instance_group] == [8]
    (tmp_path / "d").mkdir()
    decoupled = config_with(tmp_path / "d")
    assert run_publish(decoupled, tmp_path / "work-d", Upstream(), profile="throughput").error is None
    bls = parse(slot_of(decoupled, "throughput") / "1" / "tensorrt_llm_bls" / "config.pbtxt")
    assert (bls.max_batch_size, [g.count for g in bls.instance_group]) == (8, [1])  # worker threads


# --- trust: published versions are immutable and verified --------------------------------------------


def _edit_config_in_place(path: Path) -> None:
    os.chmod(path, 0o644)  # published files are read-only: an in-place write takes a chmod (or root)
    with open(path, "a") as f:
        f.write("# edited\n")


def _replace_config(path: Path) -> None:
    text = path.read_text()
    path.unlink()
    path.write_text(text.replace("max_queue_delay_microseconds: 100", "max_queue_delay_microseconds: 101"))


@pytest.mark.parametrize("force", [False, True], ids=["run", "publish-force"])
@pytest.mark.parametrize("tamper", [_edit_config_in_place, _replace_config], ids=["in-place", "replaced"])
def test_a_published_file_edited_is_found_and_a_fresh_version_published(tmp_path, tamper, force):
    config = config_with(tmp_path)
    work = tmp_path / "work"
    assert run_publish(config, work, Upstream()).error is None
    slot = slot_of(config)
    edited = slot / "1" / "tensorrt_llm" / "config.pbtxt"
    pristine = edited.read_text()
    tamper(edited)

    report = run_publish(config, work, Upstream(), force=force)
    assert report.error is None, report.error
    published = result_of(report, "publish")
    assert published.state is TaskState.ran and "unchanged" not in published.summary
    assert release.versions(slot) == [1, 2] and os.readlink(slot / "current") == "2"
    assert [str(p) for p in release.check_version(slot / "1").problems] == [
        "modified: tensorrt_llm/config.pbtxt"
    ]
    assert (slot / "2" / "tensorrt_llm" / "config.pbtxt").read_text() == pristine
    assert release.check_version(slot / "2").ok
    # And now it is current and intact: nothing more to do.
    again = run_publish(config, work, Upstream())
    assert result_of(again, "publish").state is TaskState.up_to_date and release.versions(slot) == [1, 2]


def test_published_files_are_read_only_and_world_readable(tmp_path):
    config = config_with(tmp_path)
    assert run_publish(config, tmp_path / "work", Upstream()).error is None
    version = slot_of(config) / "1"
    for path in [version, *version.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o444), path


CHILD_PUBLISH = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from publish_upstream import Upstream, run_publish
    from pipeline.facts.config import load_config

    real_link, links = os.link, []

    def slow_link(src, dst, **kwargs):  # every file placed takes a while, so two publishes overlap
        links.append(dst)
        if "/published/" in str(dst):
            if os.environ.get("KILL_AFTER") and len(links) > int(os.environ["KILL_AFTER"]):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.05)
        return real_link(src, dst, **kwargs)

    config = load_config(Path({cfg!r}))
    os.link = slow_link
    ready = Path({ready!r})
    ready.joinpath(str(os.getpid())).touch()
    while len(list(ready.iterdir())) < int(os.environ.get("PARTIES", "1")):
        time.sleep(0.01)
    report = run_publish(config, Path(sys.argv[1]), Upstream())
    print(report.error or next(r for r in report.results if r.task.stage == "publish").summary)
    """
)


def _child_publish(tmp_path: Path, work: Path, **env: str) -> subprocess.Popen:
    ready = tmp_path / "ready"
    ready.mkdir(exist_ok=True)
    script = CHILD_PUBLISH.format(
        tests=str(Path(__file__).parent), cfg=str(tmp_path / "pipeline.toml"), ready=str(ready)
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(work)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_publish_killed_midway_leaves_nothing_a_later_publish_does_not_clean(tmp_path):
    config = config_with(tmp_path)
    work = tmp_path / "work"
    child = _child_publish(tmp_path, work, KILL_AFTER="3")
    _, err = child.communicate(timeout=300)
    assert child.returncode == -9, err
    slot = slot_of(config)
    assert [p.name for p in slot.iterdir() if p.name.startswith(".tmp-")], "the kill left a staged version"
    assert release.versions(slot) == []

    report = run_publish(config, work, Upstream())
    assert report.error is None, report.error
    assert sorted(p.name for p in slot.iterdir()) == ["1", "current"]
    assert release.check_version(slot / "1").ok


def test_two_publishes_at_once_to_one_destination_make_one_version(tmp_path):
    config = config_with(tmp_path)
    children = [_child_publish(tmp_path, tmp_path / f"work-{n}", PARTIES="2") for n in (1, 2)]
    outputs = [c.communicate(timeout=300) for c in children]
    assert [c.returncode for c in children] == [0, 0], outputs
    summaries = sorted(out.strip() for out, _ in outputs)
    slot = slot_of(config)
    assert release.versions(slot) == [1] and os.readlink(slot / "current") == "1"
    assert "(new)" in summaries[0] and "unchanged, already current" in summaries[1], summaries


def test_a_copied_release_is_verified_by_stat_on_later_runs(tmp_path, monkeypatch):
    """Another filesystem (or another mount of one, as in a container) gets copies: each is hashed
    when placed, and later runs check it by its recorded stat, not by hashing it again."""
    from pipeline.core import integrity

    monkeypatch.setattr(atomic.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    config = config_with(tmp_path)
    assert run_publish(config, tmp_path / "work", Upstream()).error is None
    hashed = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: hashed.append(p) or real(p))
    again = run_publish(config, tmp_path / "work", Upstream())
    assert result_of(again, "publish").state is TaskState.up_to_date and hashed == []


# --- a gated file replaced while publish places its files (issue 26, item 1) ---

# Where each gated file lies in the released repository.
RELEASED_AS = {
    "engine/rank0.safetensors": "tensorrt_llm/1/engine/rank0.safetensors",
    "model/tokenizer_config.json": "preprocessing/tokenizer/tokenizer_config.json",
    "gate.json": "gate.json",
}


def _restore(path: Path, data: bytes) -> None:
    """The gated bytes back, as a new file (its stat differs from the manifest's: the check hashes it)."""
    os.unlink(path)
    path.write_bytes(data)


# (stage, file, tamper, placement, stride): every delay for the engine (the file the attack replaced),
# every third for the rest, to keep the suite fast.
RACES = [
    ("build", "engine/rank0.safetensors", _rewrite_weights, "hardlink", 1),
    ("build", "engine/rank0.safetensors", _edit_weights_in_place, "hardlink", 1),
    ("build", "engine/rank0.safetensors", _rewrite_weights, "copy", 3),
    ("build", "engine/rank0.safetensors", _edit_weights_in_place, "copy", 3),
    ("fetch", "model/tokenizer_config.json", _rewrite_weights, "hardlink", 3),
    ("fetch", "model/tokenizer_config.json", _edit_weights_in_place, "hardlink", 3),
    ("gate", "gate.json", _rewrite_weights, "hardlink", 3),
    ("gate", "gate.json", _edit_weights_in_place, "hardlink", 3),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, file, tamper, placement, stride",
    RACES,
    ids=[f"{r[0]}-{'replaced' if r[2] is _rewrite_weights else 'in-place'}-{r[3]}" for r in RACES],
)
def test_a_gated_file_changed_while_publish_places_files_is_never_released(
    tmp_path, monkeypatch, stage, file, tamper, placement, stride
):
    """The file changes just before the k-th file is placed, for every k of a publish (the repository
    in the stage's folder, then the staged version at the destination): publish either refuses and
    releases nothing, or releases exactly the gated bytes. Hooked at os.link, which every placement
    calls first (a copy across filesystems follows its EXDEV), so each delay is one exact point."""
    config = config_with(tmp_path)
    work = tmp_path / "work"
    report = run_publish(config, work, Upstream())
    assert report.error is None
    gated = result_of(report, stage).path / file
    original = gated.read_bytes()
    destination = config.publish.destination
    real_link, calls, when = os.link, [], {"k": -1}

    def hooked_link(src, dst):
        if len(calls) == when["k"]:
            tamper(gated)
        calls.append(dst)
        if placement == "copy":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst)

    monkeypatch.setattr(atomic.os, "link", hooked_link)

    def publish_once(k: int, out: Path):
        shutil.rmtree(destination, ignore_errors=True)
        calls.clear()
        when["k"] = k
        try:
            return Publish().run(publish_context(config, work, report, out))
        except InputError as exc:
            return exc

    assert not isinstance(publish_once(-1, tmp_path / "untouched"), InputError)  # counts the placements
    placements = len(calls)
    assert placements > 2 * len(RELEASED_AS)  # the repository's files, then the version's
    refused = 0
    for k in range(0, placements, stride):  # 42 placements in all with the stand-ins' files
        _restore(gated, original)
        outcome = publish_once(k, tmp_path / f"out-{k}")
        slot = slot_of(config)
        if isinstance(outcome, InputError):
            refused += 1
            assert release.versions(slot) == [] and not os.path.lexists(slot / "current"), k
            continue
        version = slot / "current"
        assert (version / RELEASED_AS[file]).read_bytes() == original, k
        assert check_version(version.resolve()).ok, k  # every file hashed against the manifest
    assert refused >= 1  # a change before the file is placed in the stage's repository, at least


def test_a_full_destination_is_named_with_its_own_free_space(tmp_path, monkeypatch, capsys):
    """The destination on another, full filesystem: a hard link there fails with EXDEV, and the copy
    with ENOSPC from the write (sendfile names no file). The error names the destination and its
    free space, not the work dir's; nothing is left there but the lock."""
    config = config_with(tmp_path)
    destination = config.publish.destination
    real_link, real_copy = os.link, shutil.copyfile

    def other_filesystem(src, dst):
        if str(dst).startswith(str(destination)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst)

    def full(src, dst, **kwargs):
        if str(dst).startswith(str(destination)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(atomic.os, "link", other_filesystem)
    monkeypatch.setattr(atomic.shutil, "copyfile", full)
    report = run_publish(config, tmp_path / "work", Upstream())
    error = report.error
    assert isinstance(error, DiskSpaceError) and error.exit_code == 5
    assert error.path == slot_of(config)
    assert error.message.startswith(f"{slot_of(config)}: no space left")
    assert "work" not in error.message and "publish destination" in error.hint
    assert [p.name for p in destination.iterdir()] == [".lock"]


@pytest.fixture
def small_filesystem(tmp_path):
    """A 16 kB tmpfs (root only, where mounts are allowed: skipped elsewhere)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_destination_on_a_real_full_filesystem_is_named(tmp_path, small_filesystem):
    config = config_with(
        tmp_path, **{f'destination = "{tmp_path / "published"}"': f'destination = "{small_filesystem}"'}
    )
    report = run_publish(config, tmp_path / "work", Upstream())
    error = report.error
    slot = small_filesystem / "tiny-mistral" / "trtllm-engine" / "int8_sq" / "latency"
    assert isinstance(error, DiskSpaceError) and error.path == slot, report.error
    # What was free on this disk when the write failed (the work dir's disk has far more).
    assert error.free < shutil.disk_usage(small_filesystem).total < shutil.disk_usage(tmp_path).free
    assert "publish destination" in error.hint
    assert [p.name for p in small_filesystem.iterdir()] == [".lock"]
