"""`trtllm-pipeline verify`: every artifact and every published version against its manifest."""

from __future__ import annotations

import json
import os

from publish_upstream import Upstream, config_with, run_publish

from pipeline.cli import main


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
