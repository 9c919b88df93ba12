"""`trtllm-pipeline serve`: the current published version kept running until a signal stops it.

The end-to-end test runs the command as a user does (a child process, then SIGINT) on a real
tritonserver; the others stop before any server starts.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from publish_upstream import ON_A100, REPO_ROOT, Upstream, a100_engine_info, config_with, run_publish
from test_smoke import CONFIG_CHANGES, MAX_TOKENS, grpc_stream, shm_regions, shm_regions_of
from test_upstream_clients import neutral_payload
from tiny_checkpoints import tiny_checkpoint

from pipeline.cli import main
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.serving import release
from pipeline.serving.client import generate, generate_stream
from pipeline.serving.server import free_port

PROFILE = "latency"
READY_TIMEOUT_S = 180  # model loads take ~5 s alone; the shared CI machine is often 10x slower


def _published(tmp_path: Path, upstream: Upstream, **changes: str) -> Path:
    config = config_with(tmp_path, **CONFIG_CHANGES, **changes)
    assert run_publish(config, tmp_path / "work", upstream, profile=PROFILE).error is None
    return tmp_path / "pipeline.toml"


def test_a_port_in_use_is_one_line_exit_2(tmp_path, capsys):
    config = _published(tmp_path, Upstream())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(
            ["serve", "--config", str(config), "--work-dir", str(tmp_path / "work"), "--profile", PROFILE]
            + ["--precision", "int8_sq", "--grpc-port", str(port)]
        )
    err = capsys.readouterr().err
    assert code == 2
    assert f"--grpc-port {port}: cannot listen on 127.0.0.1:{port}" in err
    assert err.count("ERROR") == 1 and "Traceback" not in err
    assert not (tmp_path / "work" / "serve").exists()  # refused before anything was set up


def test_an_unpublished_variant_is_one_line(tmp_path, capsys):
    config = _published(tmp_path, Upstream())
    code = main(
        ["serve", "--config", str(config), "--backend", "trtllm-engine", "--precision", "int8_wo"]
        + ["--profile", PROFILE]
    )
    assert code == 2
    assert "nothing published for this variant" in capsys.readouterr().err


def test_on_a_gpu_target_it_prints_the_containers_docker_run(tmp_path, capsys):
    config = _published(tmp_path, Upstream(engine_info=a100_engine_info()), **ON_A100)
    code = main(
        ["serve", "--config", str(config), "--precision", "int8_sq", "--profile", PROFILE]
        + ["--host", "0.0.0.0", "--http-port", "9000", "--metrics-port", "9002"]
    )
    out = capsys.readouterr().out
    assert code == 0
    argv = shlex.split(out.splitlines()[-1])
    assert argv[:2] == ["docker", "run"] and SERVING_CONTAINER.tag in argv
    published = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    # tritonserver listens on its defaults inside; docker publishes them where the options say
    assert published == ["0.0.0.0:9000:8000", "0.0.0.0:8001:8001", "0.0.0.0:9002:8002"]
    assert argv[argv.index("-v") + 1].endswith(":/models:ro")


def test_the_first_variant_is_served_when_none_is_named(tmp_path):
    """Without filters or --all, one variant (model names unchanged); filters that select several, or
    --all, serve every one they select together (tests/test_serve_together.py)."""
    from pipeline.commands.serve import chosen_variants
    from pipeline.facts.config import load_config

    config = load_config(_published(tmp_path, Upstream()))
    none = frozenset()
    assert chosen_variants(config, none, none, none) == [("trtllm-engine", "int8_sq", "latency")]
    pytorch = frozenset({"trtllm-pytorch"})
    assert chosen_variants(config, frozenset({"int8_wo"}), frozenset({"throughput"}), pytorch) == [
        ("trtllm-pytorch", "int8_wo", "throughput")
    ]
    assert chosen_variants(config, none, frozenset({"latency"}), none) == [
        ("trtllm-engine", "int8_sq", "latency"),
        ("trtllm-engine", "int8_wo", "latency"),
        ("trtllm-pytorch", "int8_wo", "latency"),
    ]
    assert chosen_variants(config, none, none, none, every=True) == config.published_variants()
    assert len(config.published_variants()) == 6


def _wait_for_line(process: subprocess.Popen, needle: str, lines: list[str]) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} from serve:\n{''.join(lines)}")


@dataclass
class ServeRun:
    process: subprocess.Popen
    http: int
    grpc: int
    metrics: int
    lines: list[str] = field(default_factory=list)  # what it printed so far

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def wait_for(self, needle: str) -> str:
        return _wait_for_line(self.process, needle, self.lines)

    def interrupt(self) -> str:
        """Ctrl-C as a user presses it: exit 130; everything it printed."""
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=120) == 130
        return "".join(self.lines) + self.process.stdout.read()


@contextmanager
def serve_cli(config: Path, work: Path, *filters: str) -> Iterator[ServeRun]:
    """`trtllm-pipeline serve` as a user runs it: a child process on free ports. Still running when the
    test ends (a failed assertion), it is stopped as a user would, by SIGTERM, so that it stops its server."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "pipeline",
        "serve",
        "--config",
        str(config),
        "--work-dir",
        str(work),
        *filters,
    ]
    argv += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "1000"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        yield ServeRun(process, http, grpc, metrics)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        process.stdout.close()


@pytest.fixture
def tiny_published(tmp_path, tiny_model_dir, tmp_path_factory):
    upstream = Upstream(
        tokenizer_dir=tiny_model_dir,
        checkpoint_dir=tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq"),
    )
    return _published(tmp_path, upstream)


@pytest.mark.triton
def test_serve_answers_http_and_grpc_alike_until_sigint(tiny_published, tiny_model_dir, tmp_path):
    """As a user runs it: a child process, HTTP and gRPC clients, and a generate_stream with every
    upstream input at its neutral value, then Ctrl-C. Exit 130, shared memory freed, nothing written
    into the version; the logged command runs as is when pasted into a bare shell."""
    import tritonclient.grpc as grpcclient
    from transformers import AutoTokenizer

    work = tmp_path / "work"
    with serve_cli(tiny_published, work) as served:
        http, grpc, metrics = served.http, served.grpc, served.metrics
        ready = served.wait_for("ready: ")
        assert f"http://127.0.0.1:{http}" in ready
        log = work / "serve" / "trtllm-engine" / "int8_sq" / PROFILE / "tritonserver.log"
        logged = log.read_text().splitlines()[0].removeprefix("$ ")
        payload = {"text_input": "The library opens at", "max_tokens": MAX_TOKENS}
        over_http = generate(f"http://127.0.0.1:{http}", "ensemble", payload)["text_output"]

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        inputs = [
            grpcclient.InferInput("text_input", [1, 1], "BYTES"),
            grpcclient.InferInput("max_tokens", [1, 1], "INT32"),
        ]
        inputs[0].set_data_from_numpy(np.array([[payload["text_input"].encode()]], dtype=object))
        inputs[1].set_data_from_numpy(np.array([[MAX_TOKENS]], dtype=np.int32))
        over_grpc = "".join(
            r["text_output"].reshape(-1)[0].decode() for r in grpc_stream(client, "ensemble", inputs)
        )
        assert over_grpc == over_http
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        ids = {"end_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id or tokenizer.eos_token_id}
        neutral = neutral_payload("ensemble", payload["text_input"], ids, stream=True)
        events = generate_stream(f"http://127.0.0.1:{http}", "ensemble", neutral)
        assert "".join(e["text_output"] for e in events if "text_output" in e) == over_http
        assert f"127.0.0.1:{metrics}" in ready
        ours = shm_regions_of(served.process.pid)  # other servers on this machine have regions of their own
        assert ours

        out = served.interrupt()
    assert "stopped by SIGINT" in out and "Traceback" not in out
    assert ours & shm_regions() == set()
    version = (
        tmp_path / "published" / "tiny-mistral" / "trtllm-engine" / "int8_sq" / PROFILE / "current"
    ).resolve()
    assert release.check_version(version).ok and not list(version.rglob("__pycache__"))

    with socket.socket() as probe:  # serve's own server is gone: only the pasted one can answer below
        assert probe.connect_ex(("127.0.0.1", http)) != 0
    # The logged command, pasted into a shell with a bare environment, serves too (the stub's libraries
    # and interpreter come from the line itself).
    pasted = subprocess.Popen(
        ["bash", "-c", f"exec {logged}"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and pasted.poll() is None:
            try:
                generate(f"http://127.0.0.1:{http}", "ensemble", payload)
                break
            except Exception:  # noqa: BLE001 (not up yet)
                time.sleep(0.5)
        assert generate(f"http://127.0.0.1:{http}", "ensemble", payload)["text_output"] == over_http
        ours = shm_regions_of(pasted.pid)
        assert ours
    finally:
        pasted.send_signal(signal.SIGTERM)
        pasted.wait(timeout=120)
    assert ours & shm_regions() == set()
