"""`trtllm-pipeline verify`: every artifact and every published version against its manifest."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from publish_upstream import Upstream, config_with, run_publish

from pipeline.cli import main
from pipeline.core.errors import IntegrityError
from pipeline.core.reporter import RecordingReporter
from pipeline.execution.results import TaskState
from pipeline.serving.release_manifest import RELEASE_MANIFEST
from pipeline.serving.smoke import published_repository


def slot_of(config, profile: str = "latency"):
    return config.publish.destination / "tiny-mistral" / "trtllm-engine" / "int8_sq" / profile


def _found(body: dict) -> set[tuple[str, str]]:
    return {(f["path"], f["problem"]) for f in body["findings"]}


def _verify(tmp_path, capsys) -> tuple[int, dict, str]:
    code = main(
        [
            "verify",
            "--json",
            "--config",
            str(tmp_path / "pipeline.toml"),
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_verify_passes_an_intact_store_and_destination(tmp_path, capsys):
    config = config_with(tmp_path)
    assert run_publish(config, tmp_path / "work", Upstream()).error is None
    code, body, _ = _verify(tmp_path, capsys)
    assert code == 0 and body["ok"] is True and body["findings"] == []
    assert (body["artifacts"], body["published"]) == (
        6,
        1,
    )  # fetch, calibrate, build, gate_engine, gate, publish


def test_verify_lists_every_modified_file_and_exits_non_zero(tmp_path, capsys):
    config = config_with(tmp_path)
    report = run_publish(config, tmp_path / "work", Upstream())
    gate = next(r for r in report.results if r.task.stage == "gate")
    (gate.path / "gate.json").unlink()
    (gate.path / "gate.json").write_text('{"ok": true}')  # a forged verdict, as a new file
    version = config.publish.destination / "tiny-mistral" / "trtllm-engine" / "int8_sq" / "latency" / "1"
    (version / "ensemble" / "1" / "__pycache__").mkdir()
    (version / "ensemble" / "1" / "__pycache__" / "model.cpython-312.pyc").write_bytes(b"\0")
    os.chmod(version / "preprocessing" / "config.pbtxt", 0o644)
    with open(version / "preprocessing" / "config.pbtxt", "a") as f:
        f.write("\n")
    (version.parent / ".tmp-0123abcd").mkdir()  # what a publish killed mid-way leaves

    code, body, err = _verify(tmp_path, capsys)
    assert code == 2 and body["ok"] is False
    found = {(f["path"], f["problem"]) for f in body["findings"]}
    publish = next(r for r in report.results if r.task.stage == "publish")
    assert found == {
        (str(gate.path), "modified: gate.json"),
        # the edited config is a hard link of the publish artifact's copy: both are found
        (str(publish.path), "modified: repository/preprocessing/config.pbtxt"),
        (str(version), "modified: preprocessing/config.pbtxt"),
        (str(version), "not in the manifest: ensemble/1/__pycache__/model.cpython-312.pyc"),
        (str(version.parent), "partial publish: .tmp-0123abcd"),
    }
    assert "verify found 5 problem(s)" in err and len(err.strip().splitlines()) == 2  # error + tip


def test_verify_goes_green_again_after_a_version_was_served_in_place_and_prune_ran(tmp_path, capsys):
    """A server run on version 1 in place writes __pycache__ into it: `run` publishes version 2, which
    `verify` checks by default; `verify --all` still sees version 1 and names `prune`, which removes it."""
    config = config_with(tmp_path)
    assert run_publish(config, tmp_path / "work", Upstream()).error is None
    slot = slot_of(config)
    (slot / "1" / "preprocessing" / "1" / "__pycache__").mkdir()
    (slot / "1" / "preprocessing" / "1" / "__pycache__" / "model.cpython-312.pyc").write_bytes(b"\0")

    code, body, err = _verify(tmp_path, capsys)
    assert code == 2 and [f["path"] for f in body["findings"]] == [str(slot / "1")]
    assert "TIP `trtllm-pipeline run` publishes a fresh version; `trtllm-pipeline prune --keep 1`" in err

    assert run_publish(config, tmp_path / "work", Upstream()).error is None  # what `run` does next
    assert os.readlink(slot / "current") == "2"
    code, body, _ = _verify(tmp_path, capsys)
    assert code == 0 and body["published"] == 1  # the current version only

    args = ["--config", str(tmp_path / "pipeline.toml"), "--work-dir", str(tmp_path / "work")]
    assert main(["verify", "--all", *args]) == 2
    out = capsys.readouterr().out
    assert "fix: `trtllm-pipeline prune --keep 1` removes it" in out
    assert main(["prune", "--keep", "1", *args[:2]]) == 0
    capsys.readouterr()
    assert main(["verify", "--all", "--json", *args]) == 0
    assert json.loads(capsys.readouterr().out)["published"] == 1


# --- issue 26: what verify missed (items 1-4); each exits non-zero and names the file ---


def _edit_keeping_stat(path) -> None:
    """One byte changed in place with size and mtime put back: a stat record still matches."""
    st = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(path, st.st_mode)


def test_verify_hashes_every_published_file_whatever_its_stat_says(tmp_path, capsys):
    config = config_with(tmp_path)
    assert run_publish(config, tmp_path / "work", Upstream()).error is None
    version = slot_of(config) / "1"
    _edit_keeping_stat(version / "tensorrt_llm/1/engine/rank0.safetensors")
    code, body, err = _verify(tmp_path, capsys)
    assert code == 2
    assert (str(version), "modified: tensorrt_llm/1/engine/rank0.safetensors") in _found(body)
    assert "rank0.safetensors" in err


def test_verify_and_smoke_refuse_a_current_that_names_another_variants_version(tmp_path, capsys):
    config = config_with(tmp_path)
    for profile in ("latency", "throughput"):
        assert run_publish(config, tmp_path / "work", Upstream(), profile=profile).error is None
    latency, throughput = slot_of(config), slot_of(config, "throughput")
    shutil.copytree(throughput / "1", latency / "2", copy_function=shutil.copy2)
    os.unlink(latency / "current")
    os.symlink("2", latency / "current")

    code, body, err = _verify(tmp_path, capsys)
    assert code == 2
    wrong = (
        "publish-manifest.json of version 2 is for tiny-mistral/trtllm-engine/int8_sq/throughput, "
        "not tiny-mistral/trtllm-engine/int8_sq/latency"
    )
    assert {(str(latency), wrong), (str(latency / "2"), wrong)} <= _found(body)
    with pytest.raises(IntegrityError, match="refusing to serve it as trtllm-engine/int8_sq/latency"):
        published_repository(config, "trtllm-engine", "int8_sq", "latency")

    os.unlink(latency / "current")
    os.symlink("../throughput/1", latency / "current")  # a link out of the variant's folder
    code, body, _ = _verify(tmp_path, capsys)
    assert code == 2
    assert (
        str(latency),
        "current points to ../throughput/1, not a version folder of this variant",
    ) in _found(body)
    with pytest.raises(IntegrityError, match="not a version folder of this variant"):
        published_repository(config, "trtllm-engine", "int8_sq", "latency")

    # `run` (status says modified) publishes a fresh version of this variant and points current at it.
    report = run_publish(config, tmp_path / "work", Upstream())
    assert report.error is None and os.readlink(latency / "current") == "3"
    assert published_repository(config, "trtllm-engine", "int8_sq", "latency") == latency / "current"


def test_verify_finds_an_edited_publish_manifest(tmp_path, capsys):
    config = config_with(tmp_path)
    assert run_publish(config, tmp_path / "work", Upstream()).error is None
    manifest = slot_of(config) / "1" / RELEASE_MANIFEST
    edited = json.loads(manifest.read_text())
    edited["gate"]["summary"] = "all good, trust me"  # every file still matches the list it holds
    os.chmod(manifest, 0o644)
    manifest.write_text(json.dumps(edited, indent=2) + "\n")
    code, body, err = _verify(tmp_path, capsys)
    assert code == 2
    problem = "modified: publish-manifest.json (not the one publish wrote: its sha256 differs from the store's record)"
    assert _found(body) == {(str(manifest.parent), problem)}
    assert "publish-manifest.json" in err


def _ok_false(path) -> None:
    manifest = json.loads(path.read_text())
    manifest["ok"] = False
    path.write_text(json.dumps(manifest, indent=2))


def _unreadable(path) -> None:
    path.write_text("{")


@pytest.mark.parametrize("edit", [_ok_false, _unreadable], ids=["ok-false", "unreadable"])
def test_an_edited_build_manifest_is_a_modified_artifact_verify_names_and_run_rebuilds(
    tmp_path, capsys, edit
):
    config = config_with(tmp_path)
    upstream = Upstream()
    report = run_publish(config, tmp_path / "work", upstream)
    build = next(r for r in report.results if r.task.stage == "build")
    manifest = build.path / "manifest.json"
    os.chmod(manifest, 0o644)
    edit(manifest)

    code, body, err = _verify(tmp_path, capsys)
    assert code == 2 and [f["path"] for f in body["findings"]] == [str(build.path)]
    assert body["findings"][0]["problem"].startswith("modified: manifest.json (")
    assert "manifest.json" in err

    upstream.runs.clear()
    reporter = RecordingReporter()
    again = run_publish(config, tmp_path / "work", upstream, reporter=reporter)
    assert again.error is None, again.error
    assert "build[trtllm-engine/int8_sq/latency]" in upstream.runs  # rebuilt, and the rest up to date again
    assert next(r for r in again.results if r.task.stage == "build").state is TaskState.ran
    aside = [p for p in build.path.parent.iterdir() if ".modified-" in p.name]
    assert len(aside) == 1 and f"kept at {aside[0]}" in reporter.text()
    code, body, _ = _verify(tmp_path, capsys)
    assert code == 0, body
