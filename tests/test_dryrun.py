"""`run --dry-run`: every task that would run and each external command's argv, running nothing, anywhere.

The decisions are checked against what the executor then really does (stand-in stages); the argv
against trtllm-build 1.2.1's parser as tests/test_build.py pins it (tensorrt_llm/commands/build.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fake_stages import RUNS, fake_stages
from publish_upstream import ON_A100
from test_build import trtllm_build_parser
from test_store import config_with

from pipeline.cli import main
from pipeline.commands.dryrun import DryRun, plan_run
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import execute
from pipeline.facts.config import load_config
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.planning.memory import find_architecture
from pipeline.planning.tasks import plan_tasks
from pipeline.serving.release import CURRENT
from pipeline.stages.publish import variant_destination


@pytest.fixture(autouse=True)
def _clear_runs():
    RUNS.clear()


@pytest.fixture
def no_processes(monkeypatch):
    """A dry run starts nothing: any process it tried to start fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run started a process: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


def dry_run_json(capsys, *args: str) -> DryRun:
    assert main(["run", "--dry-run", "--json", *args]) == 0
    return DryRun.model_validate_json(capsys.readouterr().out)


def test_the_real_job_dry_runs_here_without_a_gpu_or_the_model(repo_root, tmp_path, capsys, no_processes):
    work = tmp_path / "work"
    dry = dry_run_json(capsys, "--config", str(repo_root / "pipeline.toml"), "--work-dir", str(work))
    config = load_config(repo_root / "pipeline.toml")
    assert [t.id for t in dry.tasks] == [t.id for t in plan_tasks(config)]
    assert all(t.would_run and t.reason == "never built" for t in dry.tasks)
    assert [(b.name, b.runtime, b.container) for b in dry.backends] == [
        ("trtllm-engine", "trtllm-engine", SERVING_CONTAINER.tag),
        ("trtllm-pytorch", "trtllm-pytorch", SERVING_CONTAINER.tag),
    ]
    assert not work.exists()  # no store, lock, log or report written

    builds = {t.id: t.commands for t in dry.tasks if t.stage == "build"}
    assert len(builds) == 12 and all(len(c) == 1 for c in builds.values())
    # Every engine build is a trtllm-build; every PyTorch-backend build shows its LLM API options file.
    options = {i: c for i, (c,) in builds.items() if i.startswith("build[trtllm-pytorch/")}
    assert len(options) == 6 and all(
        c.files[0].path.endswith("/engine/llm_api_options.yaml") for c in options.values()
    )
    builds = {i: c for i, c in builds.items() if i not in options}
    assert len(builds) == 6
    for task_id, (command,) in builds.items():
        args = trtllm_build_parser().parse_args(command.argv[1:])  # every flag is one 1.2.1 accepts
        assert command.argv[0] == "trtllm-build"
        profile = config.profile(task_id.split("/")[2].rstrip("]"))
        assert (args.max_batch_size, args.max_input_len, args.max_seq_len) == (
            profile.max_batch_size,
            profile.max_input_len,
            profile.max_seq_len,
        )
        assert args.checkpoint_dir.startswith(str(work / "store" / "calibrate"))
        assert args.output_dir.startswith(str(work / "store" / "build")) and args.output_dir.endswith(
            "/engine"
        )
        assert args.input_timing_cache.endswith(f"a100-40gb-trt{SERVING_CONTAINER.tensorrt}.cache")
        assert args.output_timing_cache == str(Path(args.output_dir).parent / "timing.cache")  # its own
    # Only builds run an external command; afterwards each published version is served by the container.
    assert all(not t.commands for t in dry.tasks if t.stage not in ("build", "gate_engine"))
    assert len(dry.serve) == 12
    first = dry.serve[0].argv
    slot = variant_destination(config, "trtllm-engine", "int8_sq", "latency") / CURRENT
    assert first[first.index("-v") + 1] == f"{slot.absolute()}:{config.publish.mount_path}:ro"
    assert SERVING_CONTAINER.tag in first and first[-2] == "tritonserver"


def test_no_published_engine_is_built_with_context_logits(repo_root, tmp_path, capsys):
    dry = dry_run_json(capsys, "--config", str(repo_root / "pipeline.toml"), "--work-dir", str(tmp_path))
    published = {t.id.replace("publish", "build", 1) for t in dry.tasks if t.stage == "publish"}
    argvs = [c.argv for t in dry.tasks if t.id in published for c in t.commands]
    assert argvs and not any("--gather_context_logits" in argv for argv in argvs)
    # The gate's own engine (one per precision, never published) is the one that gathers them.
    gate_engines = [
        c.argv for t in dry.tasks if t.stage == "gate_engine" and "trtllm-engine" in t.id for c in t.commands
    ]
    assert len(gate_engines) == 2 and all("--gather_context_logits" in argv for argv in gate_engines)


def test_the_text_dry_run_prints_each_command_as_a_shell_line(repo_root, tmp_path, capsys, no_processes):
    args = ["run", "--dry-run", "--config", str(repo_root / "pipeline.toml"), "--work-dir", str(tmp_path)]
    assert (
        main([*args, "--backend", "trtllm-engine", "--precision", "int8_wo", "--profile", "throughput"]) == 0
    )
    out = capsys.readouterr().out
    assert "trtllm-pytorch/" not in out
    assert "would run build[trtllm-engine/int8_wo/throughput]" in out and "int8_sq" not in out
    assert out.count("$ trtllm-build --checkpoint_dir ") == 2  # the served engine and the gate engine
    assert "tritonserver --model-repository=/models" in out


def run_fake(config, store, **kwargs):
    return execute(config, store, plan_tasks(config), reporter=RecordingReporter(), **kwargs)


def predicted(dry: DryRun) -> list[str]:
    return [t.id for t in dry.tasks if t.would_run]


def test_the_dry_run_predicts_what_the_run_then_runs(tmp_path):
    bad = "gate[trtllm-engine/int8_sq/latency]"
    stages = fake_stages(gate_ok=lambda ctx: ctx.task.id != bad)
    config = config_with(tmp_path)
    store = ArtifactStore(tmp_path / "work")
    run_fake(config, store, stages=stages)

    arch = find_architecture(config)
    dry = plan_run(config, store, plan_tasks(config), arch, stages=stages)
    assert predicted(dry) == []  # all up to date; the failed gate keeps its publish blocked
    states = {t.id: t.reason for t in dry.tasks}
    assert (
        states[bad].startswith("rejected")
        and states["publish[trtllm-engine/int8_sq/latency]"] == f"blocked: {bad} did not pass"
    )

    changed = config_with(tmp_path, **{"max_batch_size = 8": "max_batch_size = 4"})
    dry = plan_run(changed, store, plan_tasks(changed), arch, stages=stages)
    assert {t.id: t.reason for t in dry.tasks if t.would_run}["build[trtllm-engine/int8_wo/throughput]"] == (
        "config changed: max_batch_size"
    )
    RUNS.clear()
    run_fake(changed, store, stages=stages)
    assert RUNS == predicted(dry) and len(RUNS) == 2 * 3  # build, gate, publish of each precision

    forced = plan_run(
        changed, store, plan_tasks(changed), arch, stages=stages, force_stages=frozenset({"gate"})
    )
    gates = [t.id for t in plan_tasks(changed) if t.stage == "gate"]
    # The failed gate reruns, so its publish (never built) is planned: it runs only if the gate passes.
    assert predicted(forced) == [*gates, "publish[trtllm-engine/int8_sq/latency]"]
    assert {t.reason for t in forced.tasks if t.stage == "gate"} == {"forced"}
    RUNS.clear()
    run_fake(changed, store, stages=stages, force_stages=frozenset({"gate"}))
    assert RUNS == gates  # the gate failed again: its publish stayed blocked


def test_a_gpu_build_that_would_run_gets_the_argv_of_its_real_inputs(tmp_path):
    """Stand-in stages filled the store; the planned trtllm-build reads the calibrate artifact that exists."""
    stages = fake_stages()
    gpu = config_with(tmp_path, **ON_A100)
    store = ArtifactStore(tmp_path / "work")
    report = run_fake(gpu, store, stages=stages)
    calibrated = next(r.path for r in report.results if r.task.id == "calibrate[trtllm-engine/int8_sq]")

    changed = config_with(tmp_path, **ON_A100, **{"max_input_len = 96": "max_input_len = 64"})
    dry = plan_run(changed, store, plan_tasks(changed), find_architecture(changed), stages=stages)
    (command,) = next(t for t in dry.tasks if t.id == "build[trtllm-engine/int8_sq/throughput]").commands
    args = trtllm_build_parser().parse_args(command.argv[1:])
    assert args.checkpoint_dir == str(calibrated / "checkpoint")
    assert args.max_input_len == 64
    assert not [t for t in dry.tasks if t.stage == "build" and "latency" in t.id and t.would_run]


def test_a_dry_run_refuses_what_the_run_would_refuse(tmp_path, capsys):
    config = tmp_path / "bad.toml"  # its data files resolve against tmp_path, where there are none
    config.write_text(
        '[model]\nname = "m"\nsource = "tiny"\n[target]\ngpu = "cpu"\n'
        '[[profiles]]\nname = "p"\nmax_batch_size = 1\nmax_input_len = 8\nmax_seq_len = 16\n'
    )
    assert (
        main(["run", "--dry-run", "--json", "--config", str(config), "--work-dir", str(tmp_path / "w")]) == 2
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "calibration.dataset" in captured.err and "file not found" in captured.err


def test_the_dry_run_names_each_artifacts_store_folder_or_what_its_key_waits_for(tmp_path, capsys):
    """Keys hash the bytes of a task's inputs: known for what is built, and otherwise said to wait."""
    stages = fake_stages()
    config = config_with(tmp_path, **ON_A100)
    store = ArtifactStore(tmp_path / "work")
    fetch_only = [t for t in plan_tasks(config) if t.stage == "fetch"]
    execute(config, store, fetch_only, reporter=RecordingReporter(), stages=stages)
    dry = plan_run(config, store, plan_tasks(config), find_architecture(config), stages=stages)
    by_id = {t.id: t for t in dry.tasks}
    fetch = by_id["fetch"]
    assert fetch.key and fetch.path == str(store.slot("fetch", ()) / fetch.key) and not fetch.key_after
    calibrate = by_id[
        "calibrate[trtllm-engine/int8_sq]"
    ]  # its input is built: its key is known before it runs
    assert calibrate.would_run and calibrate.key
    assert calibrate.path.endswith(f"/trtllm-engine/int8_sq/{calibrate.key}")
    build = by_id["build[trtllm-engine/int8_sq/latency]"]
    assert build.key is None and build.key_after == ["calibrate[trtllm-engine/int8_sq]"]
    (command,) = build.commands
    args = trtllm_build_parser().parse_args(command.argv[1:])
    assert args.checkpoint_dir == f"{calibrate.path}/checkpoint"
    assert args.output_dir == str(
        store.slot("build", ("trtllm-engine", "int8_sq", "latency")) / "<key>" / "engine"
    )


@pytest.mark.parametrize(
    "change, field",
    [
        (("max_batch_size = 4\n", "max_batch_size = 64\n"), "profiles[2]"),  # long-context: 64 x 32768
        (("[gate]\n", "[gate]\nbatch_size = 4096\n"), "gate"),  # the gate engine's batch
    ],
)
def test_a_dry_run_refuses_a_profile_that_cannot_fit_as_the_run_does(
    repo_root, tmp_path, capsys, change, field
):
    text = (repo_root / "pipeline.toml").read_text()
    assert change[0] in text
    config = tmp_path / "big.toml"
    config.write_text(text.replace(*change).replace('"calib_data/', f'"{repo_root}/calib_data/'))
    args = ["--config", str(config), "--work-dir", str(tmp_path / "w")]
    assert main(["run", "--dry-run", "--json", *args]) == 2
    dry = capsys.readouterr()
    assert dry.out == "" and field in dry.err and "does not fit" in dry.err
    assert main(["plan", *args]) == 2  # the same refusal, from the plan
    assert capsys.readouterr().err.splitlines()[0] == dry.err.splitlines()[0]


@pytest.mark.parametrize("target", [{}, ON_A100])
def test_each_serve_command_names_the_variant_it_serves(tmp_path, target):
    """int8_wo is built by both backends: "to serve int8_wo/latency" twice would not say which is which."""
    config = config_with(tmp_path, **target)
    dry = plan_run(config, ArtifactStore(tmp_path / "work"), plan_tasks(config), find_architecture(config))
    purposes = [c.purpose for c in dry.serve]
    published = [t for t in plan_tasks(config) if t.stage == "publish"]
    assert len(purposes) == len(set(purposes)) == len(published)
    for task, purpose in zip(published, purposes, strict=True):
        assert f"serve {task.backend}/{task.precision}/{task.profile}" in purpose
