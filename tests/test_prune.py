"""`prune`: older published versions go, the newest N and `current` stay, and nothing half-removed is
ever seen."""

from __future__ import annotations

import json
import os

import pytest
from publish_upstream import config_with

from pipeline.cli import main
from pipeline.core.atomic import protect
from pipeline.serving.release import CURRENT, stale_versions, versions
from pipeline.stages.publish import variant_destination


def published(config, precision, profile, count, current=None, backend="trtllm-engine"):
    """A slot with versions 1..count, each a read-only folder as publish leaves it."""
    slot = variant_destination(config, backend, precision, profile)
    for v in range(1, count + 1):
        (slot / str(v) / "tensorrt_llm" / "1").mkdir(parents=True)
        (slot / str(v) / "tensorrt_llm" / "1" / "model.py").write_text(f"version {v}\n" * 100)
        protect(slot / str(v))
    os.symlink(str(current or count), slot / CURRENT)
    return slot


@pytest.mark.parametrize(
    "count, current, keep, stale",
    [
        (3, 3, 2, [1]),
        (3, 3, 1, [1, 2]),
        (3, 3, 5, []),
        (3, 1, 1, [2]),  # rolled back by hand to 1: the newest and the current stay
        (1, 1, 1, []),
    ],
)
def test_prune_keeps_the_newest_and_always_current(tmp_path, count, current, keep, stale):
    config = config_with(tmp_path)
    slot = published(config, "int8_sq", "latency", count, current)
    assert stale_versions(slot, keep) == stale


def test_prune_removes_old_versions_of_each_variant_and_dry_run_removes_nothing(tmp_path, capsys):
    config = config_with(tmp_path)
    lat = published(config, "int8_sq", "latency", 3)
    thr = published(config, "int8_wo", "throughput", 2)
    argv = ["prune", "--config", str(config.source), "--keep", "1", "--json"]
    assert main([*argv, "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True
    assert {s["slot"]: s["removed"] for s in report["slots"]} == {str(lat): [1, 2], str(thr): [1]}
    assert versions(lat) == [1, 2, 3] and versions(thr) == [1, 2]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["slots"][0]["freed_bytes"] == 2 * len("version 1\n" * 100)
    assert versions(lat) == [3] and versions(thr) == [2]
    assert os.readlink(lat / CURRENT) == "3" and (lat / CURRENT / "tensorrt_llm" / "1" / "model.py").is_file()
    assert sorted(p.name for p in lat.iterdir()) == ["3", CURRENT]  # nothing staged is left


def test_prune_filters_by_variant(tmp_path, capsys):
    config = config_with(tmp_path)
    lat = published(config, "int8_sq", "latency", 2)
    thr = published(config, "int8_sq", "throughput", 2)
    assert main(["prune", "--config", str(config.source), "--keep", "1", "--profile", "throughput"]) == 0
    assert versions(lat) == [1, 2] and versions(thr) == [2]
    assert main(["prune", "--config", str(config.source), "--precision", "fp4"]) == 2
    assert "--precision fp4: not in the config's precisions" in capsys.readouterr().err


def test_what_a_killed_prune_left_is_cleared_by_the_next(tmp_path):
    config = config_with(tmp_path)
    slot = published(config, "int8_sq", "latency", 2)
    left = slot / ".tmp-prune-1-abc" / "1"
    left.mkdir(parents=True)  # the kill came after the rename, before the delete
    assert main(["prune", "--config", str(config.source)]) == 0
    assert sorted(p.name for p in slot.iterdir()) == ["1", "2", CURRENT]
