"""publish: a gated engine -> a versioned Triton model repository; every refusal is one line and writes nothing."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from string import Template

import pytest
from google.protobuf import text_format
from publish_upstream import Upstream, a100_engine_info, config_with, run_publish
from tritonclient.grpc import model_config_pb2

from pipeline.errors import DiskSpaceError, GateFailedError, InputError, StageError
from pipeline.executor import TaskState
from pipeline.hashing import sha256_file
from pipeline.manifest import FileEntry, verify_files
from pipeline.plan import KV_FREE_FRACTION
from pipeline.reporting import RecordingReporter
from pipeline.serving import placement, release
from pipeline.serving.placement import place_file
from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest
from pipeline.serving.render import MODEL_NAMES, RepositoryValues, render_config, template_text
from pipeline.stages import publish
from pipeline.stages.base import StageContext
from pipeline.store import ArtifactStore


def parse(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def param(config: model_config_pb2.ModelConfig, key: str) -> str:
    return config.parameters[key].string_value


def slot_of(config, profile: str = "latency") -> Path:
    return config.publish.destination.joinpath("tiny-mistral", "int8_sq", profile)


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
    assert engine.backend == "python"  # cpu-reference: the reference runtime behind the backend's interface
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
        "cpu-reference",
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
    assert verify_files(version, manifest.files) == []  # with its sha256 and size

    record = result_of(report, "publish")
    stored = ArtifactStore(tmp_path / "work").get("publish", ("int8_sq", profile), record.key)
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

    monkeypatch.setattr(placement.os, "link", cross_device)
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream())
    assert report.error is None, report.error
    built = result_of(report, "build").path / "engine" / "rank0.safetensors"
    published = slot_of(config) / "1" / "tensorrt_llm/1/engine/rank0.safetensors"
    assert published.stat().st_ino != built.stat().st_ino
    assert published.read_bytes() == built.read_bytes()


def test_a_copy_that_differs_from_its_checksum_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(placement.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    with pytest.raises(InputError, match="expected 000000000000"):
        place_file(src, tmp_path / "out" / "dst.bin", "0" * 64)
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
        return place_file(src, dst, sha256)

    monkeypatch.setattr(release, "place_file", failing_place)
    changed = config_with(
        tmp_path, **{'destination = "': 'max_queue_delay_microseconds = 7\ndestination = "'}
    )
    failed = run_publish(changed, work, Upstream())  # a full disk is the step's typed error (exit 5)
    assert isinstance(failed.error, DiskSpaceError) and "no space left" in failed.error.message
    slot = slot_of(config)
    assert release.versions(slot) == [1]
    assert os.readlink(slot / "current") == "1"
    assert sorted(p.name for p in slot.iterdir()) == ["1", "current"]  # no half version left behind


def _break_engine_config(report):
    (result_of(report, "build").path / "engine" / "config.json").unlink()


def _drop_max_batch_size(report):
    path = result_of(report, "build").path / "engine" / "config.json"
    config = json.loads(path.read_text())
    del config["build_config"]["max_batch_size"]
    os.unlink(path)
    path.write_text(json.dumps(config))


def _corrupt_engine(report):
    weights = result_of(report, "build").path / "engine" / "rank0.safetensors"
    data = bytearray(weights.read_bytes())
    data[10] ^= 0xFF
    os.unlink(weights)  # a fresh inode: do not alter the store's other links
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (_break_engine_config, "no engine config.json"),
        (_drop_max_batch_size, "config.json: build_config.max_batch_size: Field required"),
        (_corrupt_engine, "engine/rank0.safetensors: sha256 differs from the manifest"),
    ],
    ids=["engine-without-config-json", "engine-config-without-limit", "checksum-mismatch"],
)
def test_a_bad_build_artifact_is_refused_in_one_line_and_nothing_is_published(tmp_path, breakage, message):
    config = config_with(tmp_path)
    work = tmp_path / "work"
    upstream = Upstream()
    first = run_publish(config, work, upstream)
    assert first.error is None
    # Break the build artifact, drop what was published, and publish again.
    breakage(first)
    shutil.rmtree(config.publish.destination)
    report = run_publish(config, work, upstream, force=True)
    assert isinstance(report.error, InputError)
    assert message in report.error.message and "\n" not in report.error.message
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
    store = ArtifactStore(tmp_path / "work")
    inputs = {
        r.task.stage: store.get(r.task.stage, r.task.variant, r.key)
        for r in report.results
        if r.task.stage in ("fetch", "build", "gate")
    }
    task = result_of(report, "publish").task
    out = tmp_path / "out"
    out.mkdir()
    ctx = StageContext(
        config=config,
        task=task,
        inputs=inputs,
        out_dir=out,
        final_path=tmp_path / "final",
        work_dir=tmp_path / "work",
        log=logging.getLogger("test"),
        log_path=tmp_path / "log",
        reporter=RecordingReporter(),
    )
    with pytest.raises(GateFailedError, match="accuracy gate did not pass"):
        publish.run(ctx)
    assert not config.publish.destination.exists()


@pytest.mark.parametrize(
    "info, message",
    [
        (a100_engine_info(), "built for target 'a100-40gb', but the config's target is 'cpu-reference'"),
    ],
)
def test_an_engine_built_for_another_target_is_refused(tmp_path, info, message):
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream(engine_info=info))
    assert isinstance(report.error, InputError) and message in report.error.message
    assert not config.publish.destination.exists()


A100 = {'gpu = "cpu-reference"': 'gpu = "a100-40gb"'}


def test_gpu_repository_serves_the_engine_with_the_tensorrtllm_backend(tmp_path):
    config = config_with(tmp_path, **A100)
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
    assert manifest.serving.serve_with == "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
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
    config = config_with(tmp_path, **A100)
    report = run_publish(config, tmp_path / "work", Upstream(engine_info=a100_engine_info(**changes)))
    assert isinstance(report.error, InputError)
    assert message in report.error.message and "\n" not in report.error.message
    assert not config.publish.destination.exists()


def test_an_unknown_serving_container_is_refused(tmp_path):
    config = config_with(
        tmp_path, **A100, **{'destination = "': 'container = "my/triton:latest"\ndestination = "'}
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
    first = release.publish_release(source, tmp_path / "slot", files, RELEASE_MANIFEST)
    assert (first.version, first.created) == (1, True)
    assert json.loads((first.path / RELEASE_MANIFEST).read_text()) == {}
    assert (first.path / "a" / "x.txt").read_text() == "x"


def test_a_copy_to_the_destination_that_fails_verification_leaves_nothing_there(tmp_path, monkeypatch):
    monkeypatch.setattr(placement.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    real_sha256 = placement.sha256_file
    monkeypatch.setattr(
        placement, "sha256_file", lambda p: "f" * 64 if "published" in str(p) else real_sha256(p)
    )
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream())
    assert isinstance(report.error, InputError) and "expected" in report.error.message
    assert not config.publish.destination.exists()
