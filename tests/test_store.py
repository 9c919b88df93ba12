"""The artifact store and executor: skip on fingerprint, rerun exactly what changed, never a half artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_stages import RUNS, fake_stages
from publish_upstream import ENGINE_ONLY

from pipeline.core.errors import LockBusyError
from pipeline.core.manifest import MANIFEST_NAME
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import execute, status
from pipeline.execution.results import TaskState
from pipeline.facts.config import load_config
from pipeline.planning.tasks import plan_tasks, select_tasks

ALL = {"fetch", "calibrate", "build", "gate", "publish"}


@pytest.fixture(autouse=True)
def _clear_runs():
    RUNS.clear()


def config_with(tmp_path: Path, *, both_backends: bool = False, **replacements: str):
    """The embedded default with replacements; the engine backend alone unless both_backends (the
    counts below are per backend)."""
    text = (Path(__file__).parent.parent / "pipeline" / "defaults" / "tiny.toml").read_text()
    if not both_backends:
        replacements = {**ENGINE_ONLY, **replacements}
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return load_config(path)


def run_all(config, store, *, tasks=None, stages=None, **kwargs):
    tasks = plan_tasks(config) if tasks is None else tasks
    return execute(
        config, store, tasks, reporter=RecordingReporter(), stages=stages or fake_stages(), **kwargs
    )


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
        assert store.check(artifact).ok


def test_each_backend_has_its_own_tasks_slots_and_keys_for_the_same_precision(tmp_path):
    config = config_with(tmp_path, both_backends=True)
    store = ArtifactStore(tmp_path / "work")
    report = run_all(config, store)
    assert report.error is None
    by_id = {r.task.id: r for r in report.results}
    engine, pytorch = (
        by_id["build[trtllm-engine/int8_wo/latency]"],
        by_id["build[trtllm-pytorch/int8_wo/latency]"],
    )
    assert engine.path.parent == store.slot("build", ("trtllm-engine", "int8_wo", "latency"))
    assert pytorch.path.parent == store.slot("build", ("trtllm-pytorch", "int8_wo", "latency"))
    assert engine.key != pytorch.key
    calibrations = {r.task.id for r in report.results if r.task.stage == "calibrate"}
    assert calibrations == {
        "calibrate[trtllm-engine/int8_sq]",
        "calibrate[trtllm-engine/int8_wo]",
        "calibrate[trtllm-pytorch/int8_wo]",
    }
    # Only that backend's tasks when the filter names it.
    only = select_tasks(plan_tasks(config), {"publish"}, backends={"trtllm-pytorch"})
    assert {t.backend for t in only} == {None, "trtllm-pytorch"}


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
    states = {r.task.id: r for r in status(changed, store, plan_tasks(changed), fake_stages())}
    assert states["build[trtllm-engine/int8_sq/throughput]"].state is TaskState.stale
    assert "config changed: max_batch_size" in states["build[trtllm-engine/int8_sq/throughput]"].reason
    assert states["gate[trtllm-engine/int8_sq/throughput]"].reason == "input changed: build"
    run_all(changed, store)
    assert sorted(RUNS) == sorted(
        f"{stage}[trtllm-engine/{p}/throughput]"
        for stage in ("build", "gate", "publish")
        for p in ("int8_sq", "int8_wo")
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
        stages=fake_stages(),
        force_stages=frozenset({"calibrate"}),
    )
    assert sorted(RUNS) == ["calibrate[trtllm-engine/int8_sq]", "calibrate[trtllm-engine/int8_wo]"]


def test_failed_gate_blocks_its_publish_only_and_stays_failed_when_cached(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    bad = "gate[trtllm-engine/int8_sq/latency]"
    stages = fake_stages(gate_ok=lambda ctx: ctx.task.id != bad)
    for _ in range(2):
        report = execute(config, store, plan_tasks(config), reporter=RecordingReporter(), stages=stages)
        states = {r.task.id: r.state for r in report.results}
        assert states[bad] is TaskState.rejected
        assert states["publish[trtllm-engine/int8_sq/latency]"] is TaskState.blocked
        assert states["publish[trtllm-engine/int8_wo/latency]"] in (TaskState.ran, TaskState.up_to_date)
        assert [r.task.id for r in report.rejected] == [bad]


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from fake_stages import fake_stages
    from pipeline.facts.config import load_config
    from pipeline.execution.driver import execute
    from pipeline.core.reporter import RecordingReporter
    from pipeline.core.store import ArtifactStore
    from pipeline.planning.tasks import plan_tasks
    from pathlib import Path
    config = load_config(Path({cfg!r}))
    store = ArtifactStore(Path({work!r}))
    with store.lock(wait=False):
        execute(config, store, plan_tasks(config), reporter=RecordingReporter(), stages=fake_stages(),
                force_stages=frozenset({{"build"}}))
    """
)


def test_stage_killed_midway_leaves_previous_artifact_and_no_partial(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    run_all(config, store)
    victim = next(t for t in plan_tasks(config) if t.id == "build[trtllm-engine/int8_sq/latency]")
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
        "import sys,time; from pathlib import Path; from pipeline.core.store import ArtifactStore\n"
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

    from pipeline.output.run_report import write_run_junit, write_run_report

    config = config_with(tmp_path)
    bad = "gate[trtllm-engine/int8_wo/throughput]"
    stages = fake_stages(gate_ok=lambda ctx: ctx.task.id != bad)
    report = execute(
        config,
        ArtifactStore(tmp_path / "work"),
        plan_tasks(config),
        reporter=RecordingReporter(),
        stages=stages,
    )
    body = json.loads(write_run_report(tmp_path / "run.json", report).read_text())
    assert body["ok"] is False and body["exit_code"] == 1
    suite = ET.parse(write_run_junit(tmp_path / "run.junit.xml", report)).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("17", "1", "1")
    failed = [c.get("name") for c in suite if c.find("failure") is not None]
    skipped = [c.get("name") for c in suite if c.find("skipped") is not None]
    assert failed == [bad] and skipped == ["publish[trtllm-engine/int8_wo/throughput]"]


# --- trust: artifacts verified by their content -----------------------------------------------------


def _edit_in_place(path: Path) -> None:
    os.chmod(path, 0o644)  # store files are read-only: an in-place write takes a deliberate chmod (or root)
    with open(path, "r+b") as f:
        f.write(b"y")


def _replace_file(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()  # a fresh inode of the same size, as an editor that saves by rename writes
    path.write_bytes(b"y" + data[1:])


def _states(config, store, stages=None):
    return {r.task.id: r for r in status(config, store, plan_tasks(config), stages or fake_stages())}


@pytest.mark.parametrize("tamper", [_edit_in_place, _replace_file], ids=["in-place", "replaced"])
@pytest.mark.parametrize("stage", ["fetch", "calibrate", "build", "gate", "publish"])
def test_a_tampered_artifact_is_modified_in_status_and_run_rebuilds_it(tmp_path, stage, tamper):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    victim = next(r for r in run_all(config, store).results if r.task.stage == stage)
    original = (victim.path / "part-1.bin").read_bytes()
    tamper(victim.path / "part-1.bin")

    states = _states(config, store)
    assert (states[victim.task.id].state, states[victim.task.id].reason) == (
        TaskState.modified,
        "modified: part-1.bin",
    )
    below = [t for t, r in states.items() if r.state is not TaskState.up_to_date and t != victim.task.id]
    assert all(states[t].reason.startswith("input changed") for t in below)  # nothing used the bad bytes
    assert victim.path.is_dir()  # status moves nothing

    RUNS.clear()
    reporter = RecordingReporter()
    report = execute(config, store, plan_tasks(config), reporter=reporter, stages=fake_stages())
    assert report.error is None
    rebuilt = next(r for r in report.results if r.task.id == victim.task.id)
    assert (rebuilt.state, rebuilt.reason) == (TaskState.ran, "modified: part-1.bin")
    assert (rebuilt.path / "part-1.bin").read_bytes() == original
    # The rebuild wrote the very bytes the tasks below were made from: they stay up to date.
    assert RUNS == [victim.task.id]
    aside = [p for p in victim.path.parent.iterdir() if p.name.startswith(f"{victim.key}.modified-")]
    assert len(aside) == 1 and (aside[0] / "part-1.bin").read_bytes() != original
    assert (
        f"{victim.task.id}: modified: part-1.bin; the modified artifact is kept at {aside[0]}"
        in reporter.text()
    )
    assert {r.state for r in _states(config, store).values()} == {TaskState.up_to_date}


def test_a_rebuild_that_writes_other_bytes_reruns_every_task_below_it(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    stages = fake_stages(varying=frozenset({"build"}))
    run_all(config, store, stages=stages)
    RUNS.clear()
    builds = select_tasks(plan_tasks(config), {"build"})
    run_all(config, store, tasks=builds, stages=stages, force_stages=frozenset({"build"}))
    assert sorted(RUNS) == sorted(t.id for t in builds if t.stage == "build")
    states = _states(config, store, stages)
    assert states["gate[trtllm-engine/int8_sq/latency]"].state is TaskState.stale
    assert states["gate[trtllm-engine/int8_sq/latency]"].reason == "input changed: build"

    RUNS.clear()
    report = run_all(config, store, stages=stages)
    assert sorted(RUNS) == sorted(r.task.id for r in report.results if r.task.stage in ("gate", "publish"))
    assert len(RUNS) == 2 * 2 * 2  # gate and publish of each precision x profile
    gate = next(r for r in report.results if r.task.id == "gate[trtllm-engine/int8_sq/latency]")
    build = next(r for r in report.results if r.task.id == "build[trtllm-engine/int8_sq/latency]")
    judged = store.get("gate", gate.task.variant, gate.key).manifest.fingerprint.inputs["build"]
    assert judged == store.get("build", build.task.variant, build.key).manifest.content_digest


def test_a_forced_rebuild_with_the_same_bytes_keeps_the_verdict(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    run_all(config, store)
    RUNS.clear()
    run_all(config, store, force_stages=frozenset({"build"}))
    assert all(r.startswith("build") for r in RUNS)  # the gate judged these very bytes already


def test_a_touched_file_is_hashed_once_then_known_by_its_stat(tmp_path, monkeypatch):
    from pipeline.core import integrity

    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    build = next(r for r in run_all(config, store).results if r.task.stage == "build")
    st = (build.path / "part-1.bin").stat()
    os.utime(build.path / "part-1.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    hashed = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: hashed.append(p) or real(p))
    RUNS.clear()
    assert {r.state for r in run_all(config, store).results} == {TaskState.up_to_date}
    assert hashed == [build.path / "part-1.bin"] and RUNS == []
    hashed.clear()
    assert {r.state for r in run_all(config, store).results} == {TaskState.up_to_date}
    assert hashed == []  # the manifest's stat record was refreshed


def test_a_file_added_to_an_artifact_is_reported(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    calibrate = next(r for r in run_all(config, store).results if r.task.stage == "calibrate")
    (calibrate.path / "extra.bin").write_bytes(b"?")
    result = _states(config, store)[calibrate.task.id]
    assert (result.state, result.reason) == (TaskState.modified, "not in the manifest: extra.bin")


def test_store_files_are_read_only_and_world_readable(tmp_path):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    run_all(config, store)
    for path in store.root.rglob("*"):
        mode = path.stat().st_mode & 0o777
        if path.is_dir():
            assert mode == 0o755, path
        elif path.name != "LATEST":
            assert mode == 0o444, path


def test_status_table_names_the_modified_file(tmp_path):
    from rich.console import Console

    from pipeline.output.console import results_table

    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    gate = next(
        r for r in run_all(config, store).results if r.task.id == "gate[trtllm-engine/int8_wo/latency]"
    )
    _replace_file(gate.path / "result.txt")
    console = Console(record=True, width=200)
    console.print(results_table("status", list(_states(config, store).values())))
    row = next(
        line for line in console.export_text().splitlines() if "gate[trtllm-engine/int8_wo/latency]" in line
    )
    assert "modified" in row and "modified: result.txt" in row
