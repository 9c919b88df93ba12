"""pipeline.core.tools: how every external tool is started."""

from __future__ import annotations

import json
import sys

import pytest
from mpi_singleton import PMIX_VARIABLES, singleton_mpi_parent

from pipeline.core.errors import ToolFailedError
from pipeline.core.tools import run_tool

DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


def test_a_child_does_not_inherit_what_mpi_putenv_after_startup(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_MARK", "kept")  # what Python sets reaches the child
    out = tmp_path / "env.json"
    with singleton_mpi_parent():
        run_tool([sys.executable, "-c", DUMP_ENV, out], stage="build", log_path=tmp_path / "log")
    env = json.loads(out.read_text())
    assert not set(PMIX_VARIABLES) & set(env)
    assert env["PIPELINE_TEST_MARK"] == "kept"


def test_env_adds_to_the_environment_and_a_failure_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_MARK", "kept")
    out = tmp_path / "env.json"
    run_tool(
        [sys.executable, "-c", DUMP_ENV, out], stage="build", log_path=tmp_path / "log", env={"X_A": "1"}
    )
    env = json.loads(out.read_text())
    assert env["X_A"] == "1" and env["PIPELINE_TEST_MARK"] == "kept"
    with pytest.raises(ToolFailedError, match="exited with code 3"):
        run_tool([sys.executable, "-c", "raise SystemExit(3)"], stage="build", log_path=tmp_path / "log")
