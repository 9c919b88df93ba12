"""The artifact store and executor: skip on fingerprint, rerun exactly what changed, never a half artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_stages import RUNS, fake_modules

from pipeline.config import load_config
from pipeline.errors import LockBusyError
from pipeline.executor import TaskState, execute, status
from pipeline.manifest import MANIFEST_NAME, verify_files
from pipeline.reporting import RecordingReporter
from pipeline.store import ArtifactStore
from pipeline.tasks import plan_tasks, select_tasks

ALL = {"fetch", "calibrate", "build", "gate", "publish"}


@pytest.fixture(autouse=True)
def _clear_runs():
    RUNS.clear()


def config_with(tmp_path: Path, **replacements: str):
    text = (Path(__file__).parent.parent / "pipeline" / "defaults" / "tiny.toml").read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return load_config(path)


def run_all(config, store, **kwargs):
    tasks = plan_tasks(config)
    return execute(config, store, tasks, reporter=RecordingReporter(), modules=fake_modules(), **kwargs)


def test_first_run_builds_everything_with_manifests(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    report = run_all(config, store)
    assert report.error is None
    assert {r.state for r in report.results} == {TaskState.ran}
    assert len(RUNS) == len(plan_tasks(config)) == 1 + 2 * 2 + 3 * 2 * 2  # gate engines included
    for result in report.results:
        manifest = json.loads((result.path / MANIFEST_NAME).read_text())
        paths = {f["path"] for f in manifest["files"]}
        assert {"part-1.bin", "result.txt", "stage.log"} <= paths
        assert manifest["fingerprint"]["tools"] == {"pydantic": manifest["fingerprint"]["tools"]["pydantic"]}
        assert manifest["duration_s"] >= 0
        artifact = store.get(result.task.stage, result.task.variant, result.key)
        assert verify_files(artifact.path, artifact.manifest.files) == []


def test_unchanged_rerun_does_no_work(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    run_all(config, store)
    RUNS.clear()
    report = run_all(config, store)
    assert RUNS == []
    assert {r.state for r in report.results} == {TaskState.up_to_date}


def test_config_change_reruns_exactly_the_affected_stages(tmp_path):
    store = ArtifactStore(tmp_path / "work")
    run_all(config_with(tmp_path), store)
    RUNS.clear()
    # A profile change touches that profile's build, gate and publish, for each precision, nothing else.
    changed = config_with(tmp_path, **{"max_batch_size = 8": "max_batch_size = 4"})
    states = {r.task.id: r for r in status(changed, store, plan_tasks(changed), fake_modules())}
    assert states["build[int8_sq/throughput]"].state is TaskState.stale
    assert "config changed: max_batch_size" in states["build[int8_sq/throughput]"].reason
    assert states["gate[int8_sq/throughput]"].reason == "input changed: build"
    run_all(changed, store)
    assert sorted(RUNS) == sorted(
        f"{stage}[{p}/throughput]" for stage in ("build", "gate", "publish") for p in ("int8_sq", "int8_wo")
    )


def test_changed_calibration_data_reruns_downstream_only(tmp_path):
    store = ArtifactStore(tmp_path / "work")
    run_all(config_with(tmp_path), store)
    RUNS.clear()
    run_all(config_with(tmp_path, **{"samples = 64": "samples = 32"}), store)
    assert not any(r.startswith("fetch") for r in RUNS)
    assert sum(r.startswith("calibrate") for r in RUNS) == 2
    assert len(RUNS) == 2 + 2 + 3 * 4  # calibrate, gate engine, and build, gate, publish per profile


def test_force_reruns_only_the_named_stage(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    run_all(config, store)
    RUNS.clear()
    tasks = select_tasks(plan_tasks(config), {"calibrate"})
    execute(
        config,
        store,
        tasks,
        reporter=RecordingReporter(),
        modules=fake_modules(),
        force_stages=frozenset({"calibrate"}),
    )
    assert sorted(RUNS) == ["calibrate[int8_sq]", "calibrate[int8_wo]"]


def test_failed_gate_blocks_its_publish_only_and_stays_failed_when_cached(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    bad = "gate[int8_sq/latency]"
    modules = fake_modules(gate_ok=lambda ctx: ctx.task.id != bad)
    for _ in range(2):
        report = execute(config, store, plan_tasks(config), reporter=RecordingReporter(), modules=modules)
        states = {r.task.id: r.state for r in report.results}
        assert states[bad] is TaskState.rejected
        assert states["publish[int8_sq/latency]"] is TaskState.blocked
        assert states["publish[int8_wo/latency]"] in (TaskState.ran, TaskState.up_to_date)
        assert [r.task.id for r in report.rejected] == [bad]


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from fake_stages import fake_modules
    from pipeline.config import load_config
    from pipeline.executor import execute
    from pipeline.reporting import RecordingReporter
    from pipeline.store import ArtifactStore
    from pipeline.tasks import plan_tasks
    from pathlib import Path
    config = load_config(Path({cfg!r}))
    store = ArtifactStore(Path({work!r}))
    with store.lock(wait=False):
        execute(config, store, plan_tasks(config), reporter=RecordingReporter(), modules=fake_modules(),
                force_stages=frozenset({{"build"}}))
    """
)


def test_stage_killed_midway_leaves_previous_artifact_and_no_partial(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    run_all(config, store)
    victim = next(t for t in plan_tasks(config) if t.id == "build[int8_sq/latency]")
    before = store.latest("build", victim.variant)
    before_files = {p.name: p.read_bytes() for p in before.path.iterdir()}

    script = CRASH_SCRIPT.format(
        tests=str(Path(__file__).parent), cfg=str(tmp_path / "cfg.toml"), work=str(store.work_dir)
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "FAKE_STAGE_CRASH": victim.id},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr

    slot = store.slot("build", victim.variant)
    leftovers = [p.name for p in slot.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert leftovers, "the kill should have left a temp dir behind for recovery to clean"
    # The previous good artifact is untouched and still the one a later stage would find.
    after = store.latest("build", victim.variant)
    assert after.key == before.key
    assert {p.name: p.read_bytes() for p in after.path.iterdir()} == before_files
    # No directory under a final name lacks a manifest.
    for path in store.root.rglob("*"):
        if path.is_dir() and len(path.name) == 20 and not path.name.startswith("."):
            assert (path / MANIFEST_NAME).is_file(), path
    with store.lock(wait=False):
        actions = store.recover()
    assert any("removed partial" in a for a in actions)
    assert not [p for p in slot.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_interrupted_replace_is_rolled_back(tmp_path):
    store = ArtifactStore(tmp_path / "work")
    final = store.slot("build", ("a",)) / "key1"
    final.mkdir(parents=True)
    (final / MANIFEST_NAME).write_text("{}")
    # State after a kill between "move old aside" and "move new in".
    final.rename(final.with_name(".trash-key1-abcd1234"))
    assert store.recover() == [f"restored {final} after an interrupted replace"]
    assert (final / MANIFEST_NAME).is_file()


def test_writer_without_manifest_commits_nothing(tmp_path):
    store = ArtifactStore(tmp_path / "work")
    with pytest.raises(RuntimeError, match="no manifest.json"):
        with store.writer("fetch", (), "k1") as out:
            (out / "half.bin").write_bytes(b"1")
    assert list(store.slot("fetch", ()).iterdir()) == []


def test_second_run_without_wait_fails_clearly(tmp_path):
    store = ArtifactStore(tmp_path / "work")
    script = (
        "import sys,time; from pathlib import Path; from pipeline.store import ArtifactStore\n"
        f"s=ArtifactStore(Path({str(store.work_dir)!r}))\n"
        "with s.lock(wait=False):\n    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockBusyError) as info:
            with store.lock(wait=False):
                pass
        assert info.value.exit_code == 4
    finally:
        holder.kill()
        holder.wait()
    with store.lock(wait=False):
        pass


def test_run_reports_name_the_rejected_and_blocked_tasks(tmp_path):
    import xml.etree.ElementTree as ET

    from pipeline.report import write_run_junit, write_run_report

    config = config_with(tmp_path)
    bad = "gate[int8_wo/throughput]"
    modules = fake_modules(gate_ok=lambda ctx: ctx.task.id != bad)
    report = execute(
        config,
        ArtifactStore(tmp_path / "work"),
        plan_tasks(config),
        reporter=RecordingReporter(),
        modules=modules,
    )
    body = json.loads(write_run_report(tmp_path / "run.json", report).read_text())
    assert body["ok"] is False and body["exit_code"] == 1
    suite = ET.parse(write_run_junit(tmp_path / "run.junit.xml", report)).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("17", "1", "1")
    failed = [c.get("name") for c in suite if c.find("failure") is not None]
    skipped = [c.get("name") for c in suite if c.find("skipped") is not None]
    assert failed == [bad] and skipped == ["publish[int8_wo/throughput]"]
