"""The Ray executor on a real Ray cluster of several nodes in this machine (ray.cluster_utils.Cluster).

Nodes: a head with one CPU, and two "GPU" nodes, each one CPU, one GPU and an accelerator label
(A100, H100) as a real GPU node advertises it. The tiny pipeline runs on the CPU (reference backend); to put two
targets' worth of builds on the cluster, the tests ask int8_sq's engine tasks for the A100 node and
int8_wo's for the H100 one (the mapping task -> resources is the one thing they replace; what the
real mapping is, tests/test_execution.py pins).
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fake_stages import CRASH_ONCE_ENV, SLOW_ENV, fake_stages
from publish_upstream import REPO_ROOT, config_with
from ray.cluster_utils import Cluster
from test_hostile import Sandbox, check_case, cli_argv, interrupt, write_config

from pipeline.cli import main
from pipeline.core.errors import ExitCode, InputError, MissingDependencyError, RemoteTaskError
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution import ray_cluster
from pipeline.execution.driver import execute
from pipeline.execution.resources import TaskResources
from pipeline.execution.results import TaskState
from pipeline.output.run_report import write_run_junit, write_run_report
from pipeline.planning.tasks import plan_tasks, select_tasks

TESTS = Path(__file__).resolve().parent
LABEL = {"int8_sq": "A100", "int8_wo": "H100"}  # as if each precision were another target's builds
ENGINE_TASKS = ("build", "gate_engine", "gate")


def two_targets(config, task) -> TaskResources:
    if task.stage in ENGINE_TASKS:
        return TaskResources(cpus=1, gpus=1, accelerator_type=LABEL[task.precision])
    return TaskResources(cpus=1)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for label in LABEL.values():
        cluster.add_node(num_cpus=1, num_gpus=1, resources={f"accelerator_type:{label}": 1})
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def connect(cluster):
    """Join the cluster, workers seeing the tests' modules (the fake stages) and `env`."""
    joined = []

    def join(**env: str) -> None:
        ray_cluster.connect(cluster.address, env_vars={"PYTHONPATH": str(TESTS), **env})
        joined.append(True)

    yield join
    if joined:
        ray_cluster.disconnect()


def node_labels() -> dict[str, set[str]]:
    """Node id prefix (as TaskResult.node names it) -> its accelerator labels."""
    import ray

    return {
        n["NodeID"][:12]: {r.split(":", 1)[1] for r in n["Resources"] if r.startswith("accelerator_type:")}
        for n in ray.nodes()
        if n["Alive"]
    }


# --- the tiny pipeline, local and on Ray ----------------------------------------------------------------

LONG_PROFILE = """
[[profiles]]
name = "long"
max_batch_size = 2
max_input_len = 224
max_seq_len = 256

[gate]"""


def tiny_config(root: Path, model_dir: Path, destination: Path):
    config = config_with(
        root,
        **{
            'source = "tiny"': f'source = "local"\nlocal_path = "{model_dir}"',
            '"calib_data/': f'"{REPO_ROOT}/calib_data/',
            "samples = 64": "samples = 16",
            "eval_samples = 32": "eval_samples = 8",
            "[gate]": LONG_PROFILE,
        },
    )
    publish = config.publish.model_copy(update={"destination": destination})
    return config.model_copy(update={"publish": publish})


def artifact_bytes(store: ArtifactStore, result) -> dict[str, str]:
    artifact = store.get(result.task.stage, result.task.variant, result.key)
    assert artifact is not None and store.check(artifact).ok
    return {f.path: f.sha256 for f in artifact.manifest.files if not f.path.endswith(".log")}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("local")
    destination = tmp_path_factory.mktemp("published")
    config = tiny_config(root, tiny_model_dir, destination)
    store = ArtifactStore(root / "work")
    report = execute(config, store, plan_tasks(config), reporter=RecordingReporter())
    assert report.error is None, report.error
    return config, store, report


def test_the_pipeline_on_ray_overlaps_places_and_equals_the_local_run_byte_for_byte(
    tmp_path, local_run, tiny_model_dir, connect
):
    local_config, local_store, local_report = local_run
    config = tiny_config(tmp_path, tiny_model_dir, local_config.publish.destination)
    store = ArtifactStore(tmp_path / "work")
    connect()
    ray_cluster.prove_shared_storage(store.work_dir)
    runner = ray_cluster.RayTaskRunner(resources_of=two_targets)
    runner.refuse_unplaceable(config, plan_tasks(config))
    console = RecordingReporter()
    t0 = time.monotonic()
    report = execute(config, store, plan_tasks(config), reporter=console, runner=runner)
    wall_s = time.monotonic() - t0
    assert report.error is None, report.error

    # Same tasks, states, keys and bytes as the local executor (logs aside: they carry timestamps).
    assert [(r.task, r.state, r.key) for r in report.results] == [
        (r.task, r.state, r.key) for r in local_report.results
    ]
    assert {r.state for r in report.results} == {TaskState.ran}
    for ours, theirs in zip(report.results, local_report.results, strict=True):
        assert artifact_bytes(store, ours) == artifact_bytes(local_store, theirs), ours.task.id

    # Each engine task ran on a node with its target's accelerator type; the rest anywhere on Ray.
    labels = node_labels()
    for result in report.results:
        node_id = result.node.split()[-1]
        assert node_id in labels, result.node
        if result.task.stage in ENGINE_TASKS:
            assert labels[node_id] == {LABEL[result.task.precision]}, (result.task.id, result.node)

    # The two targets' engine tasks ran at the same time: intervals overlap, wall < the sum of work.
    def interval(result):
        manifest = store.get(result.task.stage, result.task.variant, result.key).manifest
        return manifest.started_at.timestamp(), manifest.finished_at.timestamp()

    engine = [r for r in report.results if r.task.stage in ENGINE_TASKS]
    a100 = [interval(r) for r in engine if r.task.precision == "int8_sq"]
    h100 = [interval(r) for r in engine if r.task.precision == "int8_wo"]
    assert any(s1 < e2 and s2 < e1 for s1, e1 in a100 for s2, e2 in h100)
    assert wall_s < sum(r.duration_s for r in report.results)

    # The workers' progress and messages reached the driver's reporter.
    assert console.advanced.get("calibrating") == config.calibration.samples  # int8_sq calibrates on data
    assert any("loaded" in text for _, text in console.messages)


def test_builds_for_two_targets_run_at_once_each_on_a_node_of_its_type(tmp_path, connect):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    connect(**{SLOW_ENV: "build=1.5"})
    runner = ray_cluster.RayTaskRunner(stages=fake_stages(), resources_of=two_targets)
    report = execute(config, store, plan_tasks(config), reporter=RecordingReporter(), runner=runner)
    assert report.error is None
    builds = [r for r in report.results if r.task.stage == "build"]
    labels = node_labels()
    assert all(labels[r.node.split()[-1]] == {LABEL[r.task.precision]} for r in builds)
    spans = {}
    for r in builds:
        manifest = store.get("build", r.task.variant, r.key).manifest
        spans[r.task.id] = (manifest.started_at, manifest.finished_at)
    sq = [spans[r.task.id] for r in builds if r.task.precision == "int8_sq"]
    wo = [spans[r.task.id] for r in builds if r.task.precision == "int8_wo"]
    # Each target's builds beside the other's; one GPU per node: a node's two builds one after the other.
    assert sum(s1 < e2 and s2 < e1 for s1, e1 in sq for s2, e2 in wo) >= 2
    for node_spans in (sq, wo):
        for (s1, e1), (s2, e2) in itertools.combinations(node_spans, 2):
            assert e1 <= s2 or e2 <= s1


def test_the_tiny_model_trained_on_a_worker_is_the_one_trained_here(tmp_path, connect):
    """A Ray task gets one thread per CPU it asks for (OMP_NUM_THREADS); training must not depend on it."""
    config = config_with(tmp_path, **{"tiny_train_steps = 300": "tiny_train_steps = 30"})
    fetch = select_tasks(plan_tasks(config), {"fetch"})
    here = execute(config, ArtifactStore(tmp_path / "here"), fetch, reporter=RecordingReporter())
    connect()
    there = execute(
        config, ArtifactStore(tmp_path / "there"), fetch, reporter=RecordingReporter(),
        runner=ray_cluster.RayTaskRunner(),
    )  # fmt: skip
    assert here.error is None and there.error is None and there.results[0].node != "local"
    assert artifact_bytes(ArtifactStore(tmp_path / "there"), there.results[0]) == artifact_bytes(
        ArtifactStore(tmp_path / "here"), here.results[0]
    )


def test_a_task_no_node_can_take_fails_the_run_before_anything_runs(tmp_path, connect):
    config = config_with(tmp_path)
    connect()
    runner = ray_cluster.RayTaskRunner(
        stages=fake_stages(),
        resources_of=lambda c, t: TaskResources(1, 1, "L4") if t.stage == "build" else TaskResources(1),
    )
    with pytest.raises(MissingDependencyError) as caught:
        runner.refuse_unplaceable(config, plan_tasks(config))
    assert "build[trtllm-engine/int8_sq/latency] cannot run on this Ray cluster" in caught.value.message
    assert caught.value.message.endswith("has accelerator_type:L4")


def test_a_waiting_task_whose_node_is_gone_fails_instead_of_pending_forever(tmp_path, connect, monkeypatch):
    monkeypatch.setattr(ray_cluster, "RECHECK_S", 0.5)
    config = config_with(tmp_path)
    connect()
    # No node has L4 (as when the only one left after the run began): Ray alone would wait for ever.
    runner = ray_cluster.RayTaskRunner(
        stages=fake_stages(),
        resources_of=lambda c, t: TaskResources(1, 1, "L4") if t.stage == "build" else TaskResources(1),
    )
    t0 = time.monotonic()
    report = execute(
        config, ArtifactStore(tmp_path / "work"), plan_tasks(config), reporter=RecordingReporter(),
        runner=runner,
    )  # fmt: skip
    assert time.monotonic() - t0 < 60
    assert isinstance(report.error, RemoteTaskError) and report.error.exit_code == ExitCode.MISSING_DEPENDENCY
    failed = [r for r in report.results if r.state is TaskState.failed]
    assert failed and all(r.task.stage == "build" for r in failed)
    assert "has accelerator_type:L4" in failed[0].summary


def test_the_cli_on_ray_refuses_a_target_the_cluster_lacks_in_one_line(tmp_path, cluster, capsys):
    box = Sandbox(tmp_path, tmp_path / "work")
    config = write_config(box, 'source = "tiny"', "tiny_train_steps = 2", gpu="l4")
    argv = ["run", "--config", str(config), "--work-dir", str(box.work), "--executor", "ray"]
    assert main([*argv, "--ray-address", cluster.address]) == ExitCode.MISSING_DEPENDENCY
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert "fetch" not in line and "accelerator_type:L4" in line, line
    assert not list(box.work.glob("store/*/*"))  # nothing ran


def test_a_killed_worker_is_retried_once_and_leaves_no_partial_artifact(tmp_path, connect):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    marker = tmp_path / "killed-once"
    connect(**{CRASH_ONCE_ENV: f"build[trtllm-engine/int8_sq/latency]={marker}"})
    runner = ray_cluster.RayTaskRunner(stages=fake_stages())
    tasks = plan_tasks(config)
    report = execute(config, store, tasks, reporter=RecordingReporter(), runner=runner)
    assert marker.is_file()  # the first attempt was killed mid-task
    assert report.error is None and {r.state for r in report.results} == {TaskState.ran}
    build = next(r for r in report.results if r.task.id == "build[trtllm-engine/int8_sq/latency]")
    assert store.check(store.get("build", build.task.variant, build.key)).ok
    # The dead attempt's staged folder is still there, never read; the driver removes it.
    removed = store.recover()
    assert len(removed) == 1 and "build/trtllm-engine/int8_sq/latency/.tmp-" in removed[0]
    assert not list(store.root.rglob(".tmp-*"))


def test_a_worker_killed_on_each_try_fails_its_task_with_its_log_and_keeps_the_store_whole(tmp_path, connect):
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    tasks = plan_tasks(config)
    connect(FAKE_STAGE_CRASH="calibrate[trtllm-engine/int8_wo]")
    runner = ray_cluster.RayTaskRunner(stages=fake_stages())
    report = execute(config, store, tasks, reporter=RecordingReporter(), runner=runner)
    assert isinstance(report.error, RemoteTaskError) and report.error.exit_code == ExitCode.STAGE_FAILED
    failed = next(r for r in report.results if r.task.id == "calibrate[trtllm-engine/int8_wo]")
    assert failed.state is TaskState.failed and "its Ray worker died, 2 times" in failed.summary
    assert failed.log is not None and "running calibrate[trtllm-engine/int8_wo]" in failed.log.read_text()
    # CI sees it: the JSON row names the log, the JUnit case carries its tail.
    row = next(
        t
        for t in json.loads(write_run_report(tmp_path / "run.json", report).read_text())["tasks"]
        if t["task"] == failed.task.id
    )
    assert row["state"] == "failed" and row["log"] == str(failed.log)
    suite = ET.parse(write_run_junit(tmp_path / "run.junit.xml", report)).getroot()
    case = next(c for c in suite if c.get("name") == failed.task.id)
    assert "died, 2 times" in case.find("error").get("message")
    assert "running calibrate[trtllm-engine/int8_wo]" in case.find("system-out").text
    assert store.get("calibrate", failed.task.variant, failed.key) is None
    # What depends on it never ran (the other backend's int8_wo has a calibration of its own).
    assert not any(
        r.task.variant[:2] == failed.task.variant and r.state is TaskState.ran for r in report.results[3:]
    )
    assert len(store.recover()) == 2  # one staged folder per try, never committed
    ray_cluster.disconnect()

    # The store is consistent: a rerun (here, locally) reuses what was done and finishes the rest.
    rerun = execute(config, store, tasks, reporter=RecordingReporter(), stages=fake_stages())
    assert rerun.error is None
    done_before = {r.task for r in report.results if r.state is TaskState.ran}
    assert {r.task for r in rerun.results if r.state is TaskState.up_to_date} == done_before
    connect()  # the fixture disconnects once more


def test_workers_reach_the_drivers_hub_but_never_get_its_token(connect, monkeypatch):
    import os

    import ray

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:7/hub")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "7")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    connect()
    seen = ray.get(
        ray.remote(
            lambda: {n: os.environ.get(n) for n in ("HF_ENDPOINT", "HF_HUB_DOWNLOAD_TIMEOUT", "HF_TOKEN")}
        ).remote()
    )
    assert seen == {"HF_ENDPOINT": "http://127.0.0.1:7/hub", "HF_HUB_DOWNLOAD_TIMEOUT": "7", "HF_TOKEN": None}


def test_a_work_dir_a_node_does_not_share_is_refused_naming_the_node(tmp_path, connect):
    connect()
    elsewhere = tmp_path / "node-local-disk"

    def write_on_own_disk(path: str, token: str) -> None:  # what a node with its own /work would do
        target = elsewhere / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(token)

    with pytest.raises(InputError) as caught:
        ray_cluster.prove_shared_storage(tmp_path / "work", write=write_on_own_disk)
    assert "the work dir is not shared with Ray node" in caught.value.message
    assert "is not visible here" in caught.value.message and str(tmp_path / "work") in caught.value.message

    def cannot_write(path: str, token: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    with pytest.raises(InputError, match="could not write"):
        ray_cluster.prove_shared_storage(tmp_path / "work", write=cannot_write)
    ray_cluster.prove_shared_storage(tmp_path / "work")  # the real writer: this machine shares it
    assert not (tmp_path / "work" / ray_cluster.SHARED_CHECK_DIR).exists()


def test_ctrl_c_on_the_driver_cancels_the_ray_task_and_exits_130(tmp_path, cluster):
    box = Sandbox(tmp_path, tmp_path / "work")
    box.outside.mkdir()
    config = write_config(box, 'source = "tiny"', "tiny_train_steps = 100000")
    argv = [*cli_argv(config, box.work), "--executor", "ray", "--ray-address", cluster.address]
    before = box.snapshot()
    training = lambda out: bool(list(box.work.glob("store/fetch/.tmp-*/model")))  # noqa: E731
    outcome = interrupt(box, argv, box.env("http://127.0.0.1:9"), signal.SIGINT, training)
    check_case(box, before, outcome, 130, "interrupted by SIGINT")
    body = json.loads((box.work / "reports" / "run.json").read_text())
    assert [(t["task"], t["state"], t["summary"]) for t in body["tasks"]] == [
        ("fetch", "failed", "interrupted by SIGINT")
    ]
    assert not list(box.work.glob("store/fetch/.tmp-*"))  # the cancelled worker's folder is gone
    time.sleep(1)
    running = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "ray::_run_on_node" not in running  # the worker was killed, not left training


def test_an_address_where_no_cluster_answers_fails_in_seconds_in_one_line(tmp_path, capsys, in_repo_root):
    t0 = time.monotonic()
    argv = ["run", "--work-dir", str(tmp_path / "work"), "--executor", "ray", "--ray-address", "127.0.0.1:9"]
    assert main(argv) == ExitCode.MISSING_DEPENDENCY
    assert time.monotonic() - t0 < 30  # ray.init alone would wait minutes for that GCS
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert "no Ray cluster at --ray-address 127.0.0.1:9: nothing answers at" in line
    assert "Traceback" not in err


def test_without_ray_installed_the_ray_executor_is_one_line(tmp_path, capsys, in_repo_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as on a host without Ray installed
    argv = ["run", "--work-dir", str(tmp_path / "work"), "--executor", "ray"]
    assert main(argv) == ExitCode.MISSING_DEPENDENCY
    err = capsys.readouterr().err
    assert "needs Ray" in err and "pip install 'trtllm-pipeline[ray]'" in err and "Traceback" not in err
