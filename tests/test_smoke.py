"""The published repository on a real tritonserver (nvidia-pytriton's): answers equal the reference runtime's.

One server serves the module's repository (the throughput profile: batches of
up to 8 prompts), with gRPC on too, the one endpoint that cancels a request when
its client goes (Triton's request_cancellation.md); the CLI test starts its own,
as `trtllm-pipeline smoke` does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from publish_upstream import ON_A100, REPO_ROOT, Upstream, a100_engine_info, config_with, run_publish
from tiny_checkpoints import tiny_checkpoint

from pipeline.cli import main
from pipeline.commands import smoke as smoke_command
from pipeline.core.errors import InputError, StageError
from pipeline.datasets.jsonl import load_prompts, load_texts
from pipeline.runtime.sampling import SamplingParams
from pipeline.serving import release, smoke
from pipeline.serving.client import generate, generate_stream
from pipeline.serving.server import TritonServer, free_port
from pipeline.serving.smoke import (
    BATCH_ROUTES,
    ROUTES,
    SmokeCheck,
    SmokeReport,
    ask_batched,
    ask_server,
    batched_request,
    reference_answers,
)

MAX_TOKENS = 12
PROFILE = "throughput"  # max_batch_size 8: a request may hold several prompts
PROMPTS_FILE = REPO_ROOT / "calib_data" / "prompts.jsonl"
CONFIG_CHANGES = {'prompts = "calib_data/prompts.jsonl"': f'prompts = "{PROMPTS_FILE}"'}
SHM = Path("/dev/shm")


SHM_PREFIX = "triton_python_backend_shm_region_"


def shm_regions() -> set[str]:
    return {p.name for p in SHM.glob(f"{SHM_PREFIX}*")} if SHM.is_dir() else set()


def shm_regions_of(pid: int) -> set[str]:
    """The Python backend regions mapped by `pid` and its descendants (tritonserver, its stubs): the ones a
    server owns, told apart from those of other servers on the same machine."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after the command name: state, ppid
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # it exited meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    pids, regions = [pid], set()
    while pids:
        current = pids.pop()
        pids += children.get(current, [])
        try:
            maps = (Path("/proc") / str(current) / "maps").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        regions |= {line.rsplit("/", 1)[-1] for line in maps.splitlines() if SHM_PREFIX in line}
    return regions


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir):
    """A reference-backend repository of the tiny model's int8_sq checkpoint, published by the real publish stage."""
    tmp = tmp_path_factory.mktemp("smoke")
    config = config_with(tmp, **CONFIG_CHANGES)
    upstream = Upstream(
        tokenizer_dir=tiny_model_dir,
        checkpoint_dir=tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq"),
    )
    report = run_publish(config, tmp / "work", upstream, profile=PROFILE)
    assert report.error is None, report.error
    repository = (
        config.publish.destination / "tiny-mistral" / "trtllm-engine" / "int8_sq" / PROFILE / "current"
    )
    return config, tmp / "pipeline.toml", repository


@pytest.fixture(scope="module")
def prompts():
    return load_texts(PROMPTS_FILE, limit=3).texts


@pytest.fixture(scope="module")
def expected(published, prompts):
    return reference_answers(published[2], prompts, MAX_TOKENS)


def grpc_stream(client, model: str, inputs) -> list[dict]:
    """Every response of one request over a gRPC stream (the decoupled models answer only there), as
    {output name: numpy array}; the final empty response left out."""
    import queue

    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        responses = []
        while True:
            result, error = answers.get(timeout=300)
            if error is not None:
                raise StageError("smoke", str(error))
            outputs = {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
            if outputs:
                responses.append(outputs)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return responses
    finally:
        client.stop_stream()


@pytest.fixture(scope="module")
def server(published, tmp_path_factory):
    work = tmp_path_factory.mktemp("server")
    # gRPC on: a client can cancel a stream there.
    triton = TritonServer(smoke.serving_view(published[2], work), work_dir=work, grpc_port=free_port())
    triton.start()
    try:
        triton.wait_ready()
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
def test_a_batched_request_gets_one_answer_per_prompt_each_checked_against_its_own(
    server, published, prompts
):
    """The backend answers a batch of B with B responses of batch 1 in completion order, each with
    batch_index (model_instance_state.cc enqueue/fillTritonResponse, TensorRT-LLM 0c8de69a); the
    stand-in does, and the ensemble and the BLS model pass it on."""
    batch = batched_request(published[2], prompts, MAX_TOKENS)
    assert batch is not None and batch.limits == [12, 10, 8]
    expected = reference_answers(published[2], batch.prompts, batch.limits)
    checks = ask_batched(server.url, batch, expected)
    assert [c.route for c in checks] == [r for r in BATCH_ROUTES for _ in batch.prompts]
    assert [c.got for c in checks if not c.ok] == []
    payload = {"text_input": batch.prompts, "max_tokens": batch.limits}
    order = [e["batch_index"] for e in generate_stream(server.url, "ensemble", payload)]
    assert sorted(order) == [0, 1, 2] and order[0] == 2  # the fewest tokens to make: first done


@pytest.mark.triton
def test_an_abandoned_bls_stream_neither_holds_the_model_nor_the_engine(server, prompts):
    """BLS serves requests side by side, and stops a generation whose (gRPC) client has gone.

    Python backend (triton-inference-server/python_backend README at r24.10 01d0ad8, the 2.51 here, and
    r26.04 47f9e03): a decoupled model may answer from another thread through the request's sender,
    and `sender.is_cancelled()` reports a client that has gone; a BLS response iterator's `cancel()`
    exists only from python_backend 7f21b67, after 24.10, so the BLS model stops the engine with the
    backend's own `stop` input naming the request id (handleStopRequest, model_instance_state.cc at
    NVIDIA/TensorRT-LLM 0c8de69a), which works with both.
    """
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    def tensor(name, value, datatype):
        t = grpcclient.InferInput(name, value.shape, datatype)
        t.set_data_from_numpy(value)
        return t

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    inputs = [
        tensor("text_input", np.array([[prompts[0]]], dtype=np.object_), "BYTES"),
        tensor("max_tokens", np.array([[100]], dtype=np.int32), "INT32"),
        tensor("stream", np.array([[True]]), "BOOL"),
    ]
    client.async_stream_infer("tensorrt_llm_bls", inputs)
    result, error = events.get(timeout=60)
    assert error is None and result.as_numpy("text_output").size == 1  # streaming has begun
    # Another request is answered while that stream still runs (one BLS instance, not queued).
    short = generate(server.url, "tensorrt_llm_bls", {"text_input": prompts[1], "max_tokens": 2})
    assert short["text_output"]
    assert events.qsize() < 50  # the long stream (100 tokens) is far from over
    client.stop_stream(cancel_requests=True)
    client.close()
    log = server.log_path
    deadline = time.monotonic() + 30
    while "cancelled" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "tensorrt_llm: request 'bls-" in log.read_text()  # the engine stopped generating it


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
def test_beam_search_the_reference_runtime_lacks_is_refused_by_name(server, prompts):
    with pytest.raises(StageError, match="'beam_width'.* is not supported"):
        generate(server.url, "ensemble", {"text_input": prompts[0], "max_tokens": 4, "beam_width": 2})


@pytest.mark.triton
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_seeded_sampling_reaches_the_engine_under_the_backends_name(server, published, prompts, model):
    """`seed` (the 1.2 backend's name, utils.h InputFieldsNames::seed) decides the sampled answer."""
    sampling = {"temperature": 1.5, "top_k": 50}
    seeded, unseeded = (
        reference_answers(
            published[2], prompts[:1], MAX_TOKENS, sampling=SamplingParams(**sampling, seed=seed)
        )[0]
        for seed in (7, 0)
    )
    assert seeded != unseeded  # else this test could not tell a seed that was dropped
    payload = {"text_input": prompts[0], "max_tokens": MAX_TOKENS, "temperature": 1.5, "top_k": 50, "seed": 7}
    assert generate(server.url, model, payload)["text_output"] == seeded


@pytest.mark.triton
def test_a_prompt_over_the_engines_limit_is_refused_naming_it(server):
    long_prompt = "the library opens at nine " * 100
    with pytest.raises(StageError, match="max_input_len"):
        generate(server.url, "ensemble", {"text_input": long_prompt, "max_tokens": 4})


@pytest.mark.triton
def test_cli_smoke_serves_the_published_repository_end_to_end(published, capsys):
    _, config_path, _ = published
    argv = ["smoke", "--config", str(config_path), "--work-dir", str(config_path.parent / "work")]
    code = main(argv + ["--precision", "int8_sq", "--profile", PROFILE, "--max-tokens", "8"])
    out = capsys.readouterr()
    assert code == 0, out.err
    # two prompts through the ensemble, two streams, and both prompts in one request to each model
    assert out.out.count("ok ") == 8
    assert all(route in out.out for route in BATCH_ROUTES)
    assert "generated answer:" in out.out
    # The server wrote nothing into the version (the Python backend's __pycache__ went to its view).
    version = published[2].resolve()
    assert not list(version.rglob("__pycache__"))
    assert release.check_version(version).ok
    view = config_path.parent / "work" / "smoke" / "trtllm-engine" / "int8_sq" / PROFILE / "repository"
    assert list(view.rglob("__pycache__"))  # it does write one where it may
    served = view / "tensorrt_llm" / "1" / "engine" / "rank0.safetensors"
    assert (
        served.stat().st_ino
        == (version / "tensorrt_llm" / "1" / "engine" / "rank0.safetensors").stat().st_ino
    )


def test_smoke_refuses_a_version_that_differs_from_its_manifest(tmp_path, capsys):
    config = config_with(tmp_path, **CONFIG_CHANGES)
    assert run_publish(config, tmp_path / "work", Upstream()).error is None
    engine = config.publish.destination / "tiny-mistral/trtllm-engine/int8_sq/latency/1/tensorrt_llm/1/engine"
    (engine / "rank0.safetensors").unlink()
    (engine / "rank0.safetensors").write_bytes(b"engine bytes " * 64 + b"!")
    code = main(["smoke", "--config", str(tmp_path / "pipeline.toml"), "--profile", "latency"])
    err = capsys.readouterr().err
    assert code == 2
    assert "modified: tensorrt_llm/1/engine/rank0.safetensors" in err and "refusing to serve it" in err


def test_smoke_reads_the_prompts_file_the_gate_reads_without_a_manifest(tmp_path, capsys):
    """One schema for gate.prompts, {"prompt": ...} per line (the gate's tests read such a file with no
    manifest beside it); smoke reads it too, and stops here only at the tampered version."""
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"prompt": "Once upon a time"}\n{"prompt": "The engine"}\n')
    config = config_with(tmp_path, **{'prompts = "calib_data/prompts.jsonl"': f'prompts = "{prompts}"'})
    assert run_publish(config, tmp_path / "work", Upstream()).error is None
    assert load_prompts(prompts).texts == ["Once upon a time", "The engine"]
    version = config.publish.destination / "tiny-mistral/trtllm-engine/int8_sq/latency/1"
    os.chmod(version / "gate.json", 0o644)
    (version / "gate.json").write_text("{}")
    code = main(["smoke", "--config", str(tmp_path / "pipeline.toml"), "--profile", "latency"])
    err = capsys.readouterr().err
    assert code == 2 and "modified: gate.json" in err and "refusing to serve it" in err


def test_a_prompts_file_in_another_schema_is_refused_naming_the_field(tmp_path):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"text": "Once upon a time"}\n')
    with pytest.raises(InputError) as info:
        load_prompts(prompts)
    assert "line 1: field 'prompt' is missing" in info.value.message
    assert info.value.hint == "each line must be a JSON object whose 'prompt' is a non-empty string"


@pytest.mark.parametrize(
    "event, message",
    [
        ({"text_output": "x"}, "batch_index None names no prompt of the 2 sent"),
        ({"text_output": "x", "batch_index": 5}, "batch_index 5 names no prompt of the 2 sent"),
        ({"text_output": ["x", "y"], "batch_index": 0}, "text_output holds 2 values in one answer"),
    ],
)
def test_a_batched_answer_that_names_no_prompt_is_one_line(monkeypatch, event, message):
    monkeypatch.setattr(smoke, "generate_stream", lambda url, model, payload: iter([event]))
    batch = smoke.BatchedRequest(["a", "b"], [4, 2])
    with pytest.raises(StageError, match=message) as info:
        ask_batched("http://127.0.0.1:1", batch, ["1", "2"])
    assert "\n" not in info.value.message


def test_cli_smoke_exits_non_zero_when_an_answer_differs(tmp_path, monkeypatch, capsys):
    config_with(tmp_path, **CONFIG_CHANGES)
    differs = SmokeCheck(ROUTES[0], "prompt", expected=" right", got=" wrong")
    monkeypatch.setattr(
        smoke_command, "smoke_published", lambda *a, **k: [SmokeReport(tmp_path, checks=[differs])]
    )
    code = main(["smoke", "--config", str(tmp_path / "pipeline.toml")])
    err = capsys.readouterr().err
    assert code == 5
    assert "1 answer(s) differ from the reference runtime" in err and "' wrong'" in err


def test_cli_smoke_json_stdout_is_only_the_json(tmp_path, monkeypatch, capsys):
    """Progress goes to stderr with --json, so `smoke --json | python -m json.tool` works."""
    config_with(tmp_path, **CONFIG_CHANGES)
    same = SmokeCheck(ROUTES[0], "prompt", expected=" right", got=" right")

    def smoke_published(config, *, reporter, **kwargs):
        reporter.info("tritonserver ready at http://127.0.0.1:1")
        return [SmokeReport(tmp_path, checks=[same])]

    monkeypatch.setattr(smoke_command, "smoke_published", smoke_published)
    assert main(["smoke", "--config", str(tmp_path / "pipeline.toml"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["checks"][0]["ok"] is True
    assert "tritonserver ready" in captured.err


def test_cli_smoke_of_an_unpublished_variant_is_one_line(tmp_path, capsys):
    config_with(tmp_path, **CONFIG_CHANGES)
    code = main(["smoke", "--config", str(tmp_path / "pipeline.toml"), "--profile", "throughput"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nothing published for this variant" in err and len(err.strip().splitlines()) == 2  # error + tip


def test_smoke_refuses_a_gpu_repository_it_cannot_serve(tmp_path, capsys):
    config = config_with(tmp_path, **CONFIG_CHANGES, **ON_A100)
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
    # This module's server also has gRPC on (grpc_port; smoke's own has it off): both loopback.
    listening = listening_addresses(server.process.pid)
    assert {port for _, port in listening} == {server.http_port, server.grpc_port}
    assert {host for host, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}


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
def test_an_engine_model_without_a_parameter_the_backend_requires_does_not_load(published, tmp_path):
    """As the TensorRT-LLM backend (model_instance_state.cc reads it with no default), so the stand-in."""
    repository = tmp_path / "repository"
    shutil.copytree(published[2].resolve(), repository)
    config = repository / "tensorrt_llm" / "config.pbtxt"
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(line for line in lines if '"guided_decoding_backend"' not in line))
    with pytest.raises(StageError, match="Cannot find parameter with name: guided_decoding_backend"):
        with TritonServer(repository, work_dir=tmp_path / "server"):
            pass


@pytest.mark.triton
def test_the_server_stops_by_pid_and_frees_its_shared_memory(server):
    """Last in the module: it stops the module's server."""
    ours = shm_regions_of(server.process.pid)
    assert ours  # the probe sees the server's regions while it runs
    server.stop()
    assert server.process.returncode == 0
    assert ours & shm_regions() == set()
