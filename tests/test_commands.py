"""The verbs are library calls: a script runs the pipeline, and the self-test runs it, without the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_stages import RUNS, fake_stages
from test_store import config_with

from pipeline.commands.run import RunRequest, run_pipeline
from pipeline.core.errors import ConfigError, GateFailedError, InputError
from pipeline.core.reporter import RecordingReporter
from pipeline.execution.results import TaskState

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path):
    RUNS.clear()
    (tmp_path / "calib_data").symlink_to(REPO_ROOT / "calib_data")  # the stages' input files
    return config_with(tmp_path)


def test_run_pipeline_runs_every_task_and_writes_both_reports(config, tmp_path):
    result = run_pipeline(config, tmp_path / "work", reporter=RecordingReporter(), stages=fake_stages())
    assert result.error is None
    assert {r.state for r in result.report.results} == {TaskState.ran}
    written = json.loads(result.report_path.read_text())
    assert written["ok"] is True and [t["task"] for t in written["tasks"]] == RUNS
    assert (result.report_path.parent / "run.junit.xml").is_file()


def test_a_rejected_gate_is_the_results_error_after_the_report_is_written(config, tmp_path):
    stages = fake_stages(gate_ok=lambda ctx: ctx.task.profile != "latency")
    result = run_pipeline(config, tmp_path / "work", reporter=RecordingReporter(), stages=stages)
    assert isinstance(result.error, GateFailedError)
    assert "gate[" in result.error.message and "/latency]" in result.error.message
    assert json.loads(result.report_path.read_text())["exit_code"] == 1


def test_a_request_names_its_stages_filters_and_what_to_rerun(config, tmp_path):
    work = tmp_path / "work"
    run_pipeline(config, work, reporter=RecordingReporter(), stages=fake_stages())
    RUNS.clear()
    request = RunRequest(
        stages=frozenset({"calibrate"}), force=frozenset({"calibrate"}), precisions=frozenset({"int8_wo"})
    )
    result = run_pipeline(config, work, request, reporter=RecordingReporter(), stages=fake_stages())
    assert RUNS == ["calibrate[trtllm-engine/int8_wo]"]
    assert [r.state for r in result.report.results] == [TaskState.up_to_date, TaskState.ran]


def test_a_bad_request_is_refused_before_anything_runs(config, tmp_path):
    with pytest.raises(InputError, match="--precision fp4: not in the config's precisions"):
        run_pipeline(
            config, tmp_path / "work", RunRequest(precisions=frozenset({"fp4"})), reporter=RecordingReporter()
        )
    with pytest.raises(InputError, match="--mount-path models: String should match pattern"):
        run_pipeline(config, tmp_path / "work", RunRequest(mount_path="models"), reporter=RecordingReporter())
    (tmp_path / "calib_data").unlink()
    with pytest.raises(ConfigError, match="calibration.dataset"):
        run_pipeline(config, tmp_path / "work", reporter=RecordingReporter())
    assert RUNS == [] and not (tmp_path / "work").exists()
