"""The published repository on a real tritonserver (nvidia-pytriton's): answers equal the reference runtime's.

One server serves the module's repository; the CLI test starts its own, as
`trtllm-pipeline smoke` does.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from publish_upstream import REPO_ROOT, Upstream, a100_engine_info, config_with, run_publish
from tiny_checkpoints import tiny_checkpoint

from pipeline.cli import main
from pipeline.datasets.jsonl import load_texts
from pipeline.errors import StageError
from pipeline.serving import smoke
from pipeline.serving.client import generate, generate_stream
from pipeline.serving.server import TritonServer
from pipeline.serving.smoke import ROUTES, SmokeCheck, SmokeReport, ask_server, reference_answers

MAX_TOKENS = 12
PROMPTS_FILE = REPO_ROOT / "calib_data" / "prompts.jsonl"
CONFIG_CHANGES = {'prompts = "calib_data/prompts.jsonl"': f'prompts = "{PROMPTS_FILE}"'}
SHM = Path("/dev/shm")


def shm_regions() -> set[str]:
    return {p.name for p in SHM.glob("triton_python_backend_shm_region_*")} if SHM.is_dir() else set()


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir):
    """A cpu-reference repository of the tiny model's int8_sq checkpoint, published by the real publish stage."""
    tmp = tmp_path_factory.mktemp("smoke")
    config = config_with(tmp, **CONFIG_CHANGES)
    upstream = Upstream(
        tokenizer_dir=tiny_model_dir,
        checkpoint_dir=tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq"),
    )
    report = run_publish(config, tmp / "work", upstream)
    assert report.error is None, report.error
    repository = config.publish.destination / "tiny-mistral" / "int8_sq" / "latency" / "current"
    return config, tmp / "pipeline.toml", repository


@pytest.fixture(scope="module")
def prompts():
    return load_texts(PROMPTS_FILE, limit=3).texts


@pytest.fixture(scope="module")
def expected(published, prompts):
    return reference_answers(published[2], prompts, MAX_TOKENS)


@pytest.fixture(scope="module")
def server(published, tmp_path_factory):
    before = shm_regions()
    triton = TritonServer(published[2], work_dir=tmp_path_factory.mktemp("server"))
    triton.start()
    try:
        triton.wait_ready()
        triton.shm_before = before
        yield triton
    finally:
        triton.stop()


@pytest.mark.triton
def test_answers_through_ensemble_stream_and_bls_equal_the_reference(server, prompts, expected):
    checks = ask_server(server.url, prompts, expected, max_tokens=MAX_TOKENS)
    assert [c.route for c in checks] == [ROUTES[0]] * len(prompts) + list(ROUTES[1:])
    assert all(c.expected for c in checks)  # the model says something
    assert [c.got for c in checks if not c.ok] == []


@pytest.mark.triton
def test_a_streamed_answer_arrives_in_pieces(server, prompts, expected):
    payload = {"text_input": prompts[0], "max_tokens": MAX_TOKENS, "stream": True}
    pieces = [e["text_output"] for e in generate_stream(server.url, "ensemble", payload)]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == expected[0]


@pytest.mark.triton
def test_a_different_answer_is_reported_as_a_mismatch(server, prompts, expected):
    wrong = [e + " (not this)" for e in expected]
    checks = ask_server(server.url, prompts, wrong, max_tokens=MAX_TOKENS)
    assert checks and not any(c.ok for c in checks)
    assert [c.got for c in checks[: len(prompts)]] == expected


@pytest.mark.triton
def test_a_stop_word_ends_the_answer(server, prompts, expected):
    stop = "."
    index, answer = next((i, a) for i, a in enumerate(expected) if stop in a)
    payload = {"text_input": prompts[index], "max_tokens": MAX_TOKENS, "stop_words": [stop]}
    got = generate(server.url, "ensemble", payload)["text_output"]
    assert got == answer[: answer.index(stop) + 1]


@pytest.mark.triton
def test_sampling_the_reference_runtime_lacks_is_refused_by_name(server, prompts):
    with pytest.raises(StageError, match="'beam_width' is not supported"):
        generate(server.url, "ensemble", {"text_input": prompts[0], "max_tokens": 4, "beam_width": 2})


@pytest.mark.triton
def test_a_prompt_over_the_engines_limit_is_refused_naming_it(server):
    long_prompt = "the library opens at nine " * 100
    with pytest.raises(StageError, match="max_input_len"):
        generate(server.url, "ensemble", {"text_input": long_prompt, "max_tokens": 4})


@pytest.mark.triton
def test_cli_smoke_serves_the_published_repository_end_to_end(published, capsys):
    _, config_path, _ = published
    argv = ["smoke", "--config", str(config_path), "--work-dir", str(config_path.parent / "work")]
    code = main(argv + ["--precision", "int8_sq", "--profile", "latency", "--max-tokens", "8"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.count("ok ") == 4  # two prompts through the ensemble, two streams
    assert "generated answer:" in out.out


def test_cli_smoke_exits_non_zero_when_an_answer_differs(tmp_path, monkeypatch, capsys):
    config_with(tmp_path, **CONFIG_CHANGES)
    differs = SmokeCheck(ROUTES[0], "prompt", expected=" right", got=" wrong")
    monkeypatch.setattr(smoke, "smoke_published", lambda *a, **k: [SmokeReport(tmp_path, checks=[differs])])
    code = main(["smoke", "--config", str(tmp_path / "pipeline.toml")])
    err = capsys.readouterr().err
    assert code == 5
    assert "1 answer(s) differ from the reference runtime" in err and "' wrong'" in err


def test_cli_smoke_of_an_unpublished_variant_is_one_line(tmp_path, capsys):
    config_with(tmp_path, **CONFIG_CHANGES)
    code = main(["smoke", "--config", str(tmp_path / "pipeline.toml"), "--profile", "throughput"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nothing published for this variant" in err and len(err.strip().splitlines()) == 2  # error + tip


def test_smoke_refuses_a_gpu_repository_it_cannot_serve(tmp_path, capsys):
    config = config_with(tmp_path, **CONFIG_CHANGES, **{'gpu = "cpu-reference"': 'gpu = "a100-40gb"'})
    assert run_publish(config, tmp_path / "work", Upstream(engine_info=a100_engine_info())).error is None
    code = main(["smoke", "--config", str(tmp_path / "pipeline.toml"), "--profile", "latency"])
    err = capsys.readouterr().err
    assert code == 3
    assert "needs the 'tensorrtllm' backend" in err


@pytest.mark.triton
def test_a_model_that_does_not_load_is_named_in_one_line(tmp_path):
    model = tmp_path / "repository" / "engine_model"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "engine_model"\nbackend: "tensorrtllm"\nmax_batch_size: 1\n'
        'input [{ name: "x", data_type: TYPE_INT32, dims: [1] }]\n'
        'output [{ name: "y", data_type: TYPE_INT32, dims: [1] }]\n'
    )
    server = TritonServer(tmp_path / "repository", work_dir=tmp_path / "server")
    with pytest.raises(StageError, match="exited with code 1 before it was ready") as info:
        with server:
            pass
    message = info.value.message
    assert "engine_model" in message and "CudaDriverHelper" not in message and "\n" not in message
    assert server.process.returncode == 1


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of each TCP socket process `pid` listens on, read from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                packed = bytes.fromhex(address)
                if table == "tcp":
                    host = socket.inet_ntop(socket.AF_INET, packed[::-1])
                else:  # four little-endian 32-bit words
                    words = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
                    host = socket.inet_ntop(socket.AF_INET6, words)
                found.add((host, int(port, 16)))
    return found


@pytest.mark.triton
def test_the_server_listens_on_loopback_only(server):
    """tritonserver 2.51 binds HTTP, gRPC and metrics to 0.0.0.0 unless told (its --help: --http-address,
    --grpc-address, --metrics-address; --allow-grpc, --allow-metrics)."""
    assert listening_addresses(server.process.pid) == {("127.0.0.1", server.http_port)}


@pytest.mark.triton
@pytest.mark.parametrize("name", ["end_id", "pad_id"])
def test_a_token_id_outside_the_vocabulary_is_a_400(server, prompts, name):
    for route in ("ensemble", "tensorrt_llm_bls"):
        with pytest.raises(
            StageError, match=rf"HTTP 400: .*input '{name}' is 1000000, outside the vocabulary"
        ):
            generate(server.url, route, {"text_input": prompts[0], "max_tokens": 2, name: 1_000_000})
    generate(
        server.url, "ensemble", {"text_input": prompts[0], "max_tokens": 2, "end_id": -1}
    )  # no end token


@pytest.mark.triton
def test_the_server_stops_by_pid_and_frees_its_shared_memory(server):
    """Last in the module: it stops the module's server."""
    server.stop()
    assert server.process.returncode == 0
    assert shm_regions() - server.shm_before == set()
