"""`make gpu-selftest`: its plan (model shapes, target, argv, mount path) and its report, with stand-ins.

It cannot run without a GPU: the TensorRT-LLM process is tests/test_build.py's stand-in (the probe's
child Python answering as on an A100), the stages are tests/fake_stages.py's, and the serving step
is a stand-in returning the smoke checks the container's tritonserver would produce.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fake_stages import RUNS, StandIn, fake_stages
from mpi_singleton import singleton_mpi_parent
from test_build import A100, GIB, FakeTensorRTLLM, trtllm_build_parser

from pipeline.backends.trtllm_engine.environment import GpuInfo
from pipeline.cli import main
from pipeline.commands.dryrun import plan_run
from pipeline.commands.selftest import (
    REPORT_NAME,
    Check,
    ContainerTritonServer,
    SelftestReport,
    reference_in_child,
    run_selftest,
    selftest_config,
    target_for,
)
from pipeline.core.errors import ConfigError, MissingDependencyError
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.facts.config import parse_config
from pipeline.facts.container import SERVING_CONTAINER, TRITON_HOME
from pipeline.hub.tiny_model import generate_tiny_mistral, tiny_spec
from pipeline.planning.memory import find_architecture
from pipeline.planning.tasks import plan_tasks
from pipeline.serving.pytorch.gpu_check import GENERATE, LOAD, OPENAI, STREAM
from pipeline.serving.release import CURRENT
from pipeline.serving.server import TritonInstall
from pipeline.serving.smoke import ROUTES
from pipeline.serving.smoke_report import SmokeCheck
from pipeline.stages.publish import variant_destination


@pytest.fixture(autouse=True)
def _clear_runs():
    RUNS.clear()


@pytest.mark.parametrize(
    "name, sm, gib, target",
    [
        ("NVIDIA A100-SXM4-40GB", 80, 39.4, "a100-40gb"),
        ("NVIDIA A100-SXM4-80GB", 80, 79.1, "a100-80gb"),
        ("NVIDIA H100 80GB HBM3", 90, 79.2, "h100-80gb"),
        ("NVIDIA H200", 90, 139.8, "h200"),
        ("NVIDIA L4", 89, 22.0, "l4"),
        ("NVIDIA A10G", 86, 22.5, "a10g"),
    ],
)
def test_the_hosts_gpu_picks_its_target(name, sm, gib, target):
    assert target_for(GpuInfo(name=name, sm=sm, memory_bytes=int(gib * GIB))).name == target


def test_a_gpu_without_a_target_is_one_line():
    with pytest.raises(
        MissingDependencyError, match=r"^GPU Tesla T4 is sm75: pipeline/facts/targets.py has targets for "
    ):
        target_for(GpuInfo(name="Tesla T4", sm=75, memory_bytes=15 * GIB))


def test_the_selftest_model_has_shapes_tensorrt_llm_kernels_accept(repo_root, tmp_path):
    config = selftest_config("a100-40gb", tmp_path, repo_root / "calib_data")
    arch = find_architecture(config)
    assert arch.head_dim in (64, 128) and arch.hidden_size % 128 == 0
    assert arch.num_attention_heads % arch.num_key_value_heads == 0
    # The one tiny-model generator writes those shapes (no training needed to check them).
    spec = tiny_spec(config.model.tiny_size, seed=0, train_steps=0)
    written = json.loads((generate_tiny_mistral(tmp_path / "m", spec) / "config.json").read_text())
    assert (written["hidden_size"], written["head_dim"]) == (arch.hidden_size, arch.head_dim)
    assert written["intermediate_size"] % 128 == 0


def test_an_unknown_tiny_size_names_the_field(tmp_path):
    text = '[model]\nname = "m"\nsource = "tiny"\ntiny_size = "huge"\n[[profiles]]\nname = "p"\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text + "max_batch_size = 1\nmax_input_len = 8\nmax_seq_len = 16\n", "c.toml", tmp_path)
    assert caught.value.field == "model.tiny_size" and "known: demo, gpu" in caught.value.message


def test_the_selftest_plan_builds_one_engine_and_serves_it_where_it_lies(repo_root, tmp_path):
    config = selftest_config("h100-80gb", tmp_path / "st", repo_root / "calib_data")
    store = ArtifactStore(tmp_path / "st")
    dry = plan_run(config, store, plan_tasks(config), find_architecture(config))
    assert [t.id for t in dry.tasks if t.would_run] == [t.id for t in plan_tasks(config)]
    (command,) = [c for t in dry.tasks if t.stage == "build" for c in t.commands]
    (gate_engine,) = [c for t in dry.tasks if t.stage == "gate_engine" for c in t.commands]
    assert "--gather_context_logits" in gate_engine.argv and "--gather_context_logits" not in command.argv
    args = trtllm_build_parser().parse_args(command.argv[1:])
    assert (args.max_batch_size, args.max_input_len, args.max_seq_len) == (2, 96, 128)
    assert "h100-80gb" in args.input_timing_cache
    # gpt_model_path (= mount_path + /tensorrt_llm/1/engine) is the published version's own path.
    current = variant_destination(config, "trtllm-engine", "int8_sq", "selftest") / CURRENT
    assert config.publish.mount_path == str(current) and current.is_absolute()
    assert not (tmp_path / "st").exists()


def publishing_stages(config, gate_ok=lambda ctx: True):
    """Stand-in stages; publish also leaves what a real one does at the destination: a version folder
    and `current`, a link to it (smoke serves only a `current` that names a version of its variant)."""
    stages = fake_stages(gate_ok=gate_ok)
    fake_publish = stages["publish"]

    def run(ctx):
        slot = variant_destination(config, ctx.task.backend, ctx.task.precision, ctx.task.profile)
        (slot / "1").mkdir(parents=True, exist_ok=True)
        if not (slot / CURRENT).is_symlink():
            (slot / CURRENT).symlink_to("1")
        return fake_publish.run(ctx)

    return {
        **stages,
        "publish": StandIn("publish", run, fake_publish.config_section, tools=fake_publish.tools),
    }


class StandInServer:
    """What the container's tritonserver step returns: one smoke check per route."""

    def __init__(self, got: str = "the answer") -> None:
        self.got = got
        self.calls: list[tuple[Path, list[str], int]] = []

    def __call__(self, repository, prompts, max_tokens, work_dir):
        self.calls.append((repository, prompts, max_tokens))
        return [SmokeCheck(route, prompts[0], "the answer", self.got) for route in ROUTES]


# What pipeline.serving.pytorch.gpu_check reports (tests/test_pytorch_serving.py runs it).
PYTORCH_ROWS = (LOAD, GENERATE, STREAM, OPENAI)


def pytorch_rows(config, fetched, prompt, work_dir):
    return [Check(name=name, ok=True, detail="'the answer'") for name in PYTORCH_ROWS]


def selftest(tmp_path, repo_root, *, serve=None, gate_ok=lambda ctx: True, gpu=A100):
    work = tmp_path / "st"
    config = selftest_config("a100-40gb", work, repo_root / "calib_data")
    return run_selftest(
        work,
        repo_root / "calib_data",
        reporter=RecordingReporter(),
        runner=FakeTensorRTLLM(gpu=gpu),
        stages=publishing_stages(config, gate_ok),
        serve=serve or StandInServer(),
        # What `import tensorrt_llm` leaves in this process: Open MPI's singleton PMIx variables.
        mpi_parent=singleton_mpi_parent,
        pytorch=pytorch_rows,
    )


def test_a_passing_selftest_reports_every_step_and_writes_its_json(repo_root, tmp_path):
    serve = StandInServer()
    report = selftest(tmp_path, repo_root, serve=serve)
    names = [c.name for c in report.checks]
    assert names == [
        "environment",
        "child after MPI",
        "fetch",
        "calibrate[trtllm-engine/int8_sq]",
        "build[trtllm-engine/int8_sq/selftest]",
        "gate_engine[trtllm-engine/int8_sq/gate]",
        "gate[trtllm-engine/int8_sq/selftest]",
        "publish[trtllm-engine/int8_sq/selftest]",
        *(f"serve {route}" for route in ROUTES),
        *PYTORCH_ROWS,
    ]
    assert report.ok and all(c.ok for c in report.checks)
    assert report.target == "a100-40gb" and report.container == SERVING_CONTAINER.tag
    assert "TensorRT-LLM 1.2.1" in report.checks[0].detail
    ((repository, prompts, max_tokens),) = serve.calls
    assert repository.name == CURRENT and len(prompts) == 1 and max_tokens == 16
    saved = SelftestReport.model_validate_json((tmp_path / "st" / REPORT_NAME).read_text())
    assert saved == report


def test_a_child_that_would_inherit_mpis_variables_fails_its_row_before_any_build(
    repo_root, tmp_path, monkeypatch
):
    """Were children started from the C library's environ (env=None), the probe after the parent's
    `import tensorrt_llm` would abort in orte_init: the row fails and nothing is built."""
    monkeypatch.setattr("pipeline.core.tools.child_environ", lambda extra=None: None)
    RUNS.clear()
    report = selftest(tmp_path, repo_root)
    assert [(c.name, c.ok) for c in report.checks] == [("environment", True), ("child after MPI", False)]
    assert "fails to import" in report.checks[1].detail and not RUNS and not report.ok


def test_every_selftest_really_builds_again(repo_root, tmp_path):
    selftest(tmp_path, repo_root)
    RUNS.clear()
    assert selftest(tmp_path, repo_root).ok
    assert RUNS == [
        t.id for t in plan_tasks(selftest_config("a100-40gb", tmp_path, Path())) if t.stage != "fetch"
    ]


def test_a_failed_gate_fails_the_selftest_and_skips_serving(repo_root, tmp_path):
    serve = StandInServer()
    report = selftest(tmp_path, repo_root, serve=serve, gate_ok=lambda ctx: False)
    result = {c.name: c.ok for c in report.checks}
    assert (
        result["gate[trtllm-engine/int8_sq/selftest]"] is False
        and result["publish[trtllm-engine/int8_sq/selftest]"] is False
    )
    assert result["serve"] is None and not serve.calls and not report.ok


def test_an_answer_that_differs_from_the_engines_fails_its_row(repo_root, tmp_path):
    report = selftest(tmp_path, repo_root, serve=StandInServer(got="something else"))
    row = next(c for c in report.checks if c.name == "serve ensemble/generate")
    assert row.ok is False and row.detail == "expected 'the answer', got 'something else'"
    assert not report.ok


def test_a_host_without_tensorrt_llm_fails_in_one_line_exit_3_with_a_report(tmp_path, capsys, in_repo_root):
    if subprocess.run(["python3", "-c", "import tensorrt_llm"], capture_output=True).returncode == 0:
        pytest.skip("this machine has TensorRT-LLM")
    assert main(["gpu-selftest", "--work-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(
        f"ERROR TensorRT-LLM is not installed: run the self-test inside {SERVING_CONTAINER.tag}"
    )
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    assert report["ok"] is False and [c["name"] for c in report["checks"]] == ["environment"]


def test_the_container_server_uses_the_images_own_backends(tmp_path):
    install = TritonInstall(
        tritonserver=Path("/opt/tritonserver/bin/tritonserver"),
        python_backend=TRITON_HOME / "backends" / "python",
        stub=TRITON_HOME / "backends" / "python" / "triton_python_backend_stub",
        libs=TRITON_HOME / "lib",
        python_bin=Path("/usr/bin"),
    )
    server = ContainerTritonServer(tmp_path / "repo", work_dir=tmp_path / "serve", install=install)
    argv = server.argv(server._backends())
    assert f"--backend-directory={TRITON_HOME / 'backends'}" in argv
    assert f"--model-repository={tmp_path / 'repo'}" in argv
    assert not (tmp_path / "serve").exists()  # nothing copied: the tensorrtllm backend stays where it is


def test_the_reference_answers_come_from_a_child_process(tmp_path):
    seen = []

    def child(argv, **kwargs):
        seen.append(argv)
        Path(argv[-1]).write_text(json.dumps(["greedy"]))
        return subprocess.CompletedProcess(argv, 0)

    assert reference_in_child(tmp_path / "repo", ["hi"], 16, tmp_path, runner=child) == ["greedy"]
    (argv,) = seen
    assert argv[1:5] == ["-m", "pipeline.commands.selftest", "reference", str(tmp_path / "repo")]
    assert json.loads(Path(argv[6]).read_text()) == ["hi"]


class PythonBackendServer:
    """The container's tritonserver as far as the published files go: its Python backend writes
    `__pycache__` beside each model.py it loads (tests/test_smoke.py shows the real server doing
    so); `into` is where it writes, the repository it was given unless a test says otherwise."""

    def __init__(self, repository, *, work_dir, install, into=None):
        self.into = into or repository
        self.url = "http://127.0.0.1:1"

    def __enter__(self):
        for model in self.into.glob("*/1/model.py"):
            (model.parent / "__pycache__").mkdir(exist_ok=True)
            (model.parent / "__pycache__" / "model.cpython-312.pyc").write_bytes(b"bytecode")
        return self

    def __exit__(self, *exc):
        return False


def published_cpu_version(tmp_path):
    from publish_upstream import Upstream, config_with, run_publish

    from pipeline.serving.smoke import published_repository

    config = config_with(tmp_path)
    assert run_publish(config, tmp_path / "work", Upstream()).error is None
    return published_repository(config, "trtllm-engine", "int8_sq", "latency")


def test_the_selftest_serves_a_view_and_the_version_stays_as_published(tmp_path, monkeypatch):
    from pipeline.commands import selftest
    from pipeline.serving import release, smoke

    repository = published_cpu_version(tmp_path)
    served = []

    def server(repository, **kwargs):
        served.append(repository)
        return PythonBackendServer(repository, **kwargs)

    monkeypatch.setattr(selftest, "container_install", lambda: None)
    monkeypatch.setattr(selftest, "reference_in_child", lambda *a: ["greedy"])
    monkeypatch.setattr(selftest, "ContainerTritonServer", server)
    monkeypatch.setattr(smoke, "ask_server", lambda url, prompts, expected, **k: [])
    selftest.serve_in_container(repository, ["hi"], 4, tmp_path / "serve")
    assert served == [tmp_path / "serve" / "repository"]
    assert list(served[0].glob("*/1/__pycache__"))  # the backend wrote into the view...
    assert release.check_version(repository.resolve()).ok  # ...and never into the version


def test_a_server_that_writes_into_the_version_fails_the_selftests_serve_step(tmp_path, monkeypatch):
    from pipeline.commands import selftest
    from pipeline.core.errors import IntegrityError
    from pipeline.serving import smoke

    repository = published_cpu_version(tmp_path)
    writes_into_version = lambda served, **kwargs: PythonBackendServer(served, into=repository, **kwargs)  # noqa: E731
    monkeypatch.setattr(selftest, "container_install", lambda: None)
    monkeypatch.setattr(selftest, "reference_in_child", lambda *a: ["greedy"])
    monkeypatch.setattr(selftest, "ContainerTritonServer", writes_into_version)
    monkeypatch.setattr(smoke, "ask_server", lambda url, prompts, expected, **k: [])
    with pytest.raises(
        IntegrityError, match="differs from its publish-manifest.json.*the server wrote into it"
    ):
        selftest.serve_in_container(repository, ["hi"], 4, tmp_path / "serve")
