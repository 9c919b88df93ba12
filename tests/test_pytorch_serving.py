"""The PyTorch backend's release: Triton's llmapi repository and the trtllm-serve bundle, and both served
on the CPU by stand-ins driven with real clients (tritonclient, the openai client).

Upstream behaviours relied on, read where stated:
- llmapi config.pbtxt, model.yaml, model.py, helpers.py: NVIDIA/TensorRT-LLM
  triton_backend/all_models/llmapi/tensorrt_llm/ (config.pbtxt @ 0a710573, model.yaml @ 0ebb1536,
  model.py @ 044a90d2, helpers.py @ 0df60f9a; the stored index has no copy at the submodule commit
  2fdb9e66 that tensorrtllm_backend r26.04 @ ce68ff5f pins, nor at v1.2.1) and tensorrtllm_backend
  all_models/llmapi/tensorrt_llm/1/model.py @ dbae4e88 (the 2025 original). Stable across all of them:
  the tensor names and dims, model.yaml's `triton_config` (max_batch_size 0, decoupled) read by
  auto_complete_config, every other key passed to LLM(**args), a 1-D text_input, "Streaming is only
  supported in decoupled mode.", text_output = RequestOutput.outputs[i].text (cumulative: executor
  result.py CompletionOutput.text_diff = text[_last_text_len:]), exclude_input_from_output default False.
  tensorrtllm_backend r26.04 docs/llmapi.md shows an answer that starts with its prompt, and the
  perf-metrics outputs declared here.
- trtllm-serve: tensorrt_llm/commands/serve.py @ 00209af1 (click: MODEL, --backend {pytorch,...},
  --extra_llm_api_options/--config, --host default localhost, --port default 8000; the options file's
  keys override the flags through update_llm_args_with_extra_dict), serve/openai_server.py @ 00057725
  (routes /health, /v1/models, /v1/completions, /v1/chat/completions; model id = the checkpoint
  folder's name), serve/openai_protocol.py @ 0076e939 (ModelCard owned_by "tensorrt_llm",
  CompletionResponse "cmpl-"/"text_completion", ErrorResponse, extra="forbid"; chat requests'
  add_special_tokens default False, completions' True). Newer than 1.2.1: only long-standing fields
  are relied on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from pipeline.core.hashing import sha256_file
from pipeline.core.reporter import RecordingReporter
from pipeline.facts import layout
from pipeline.serving.models.tensornames import LlmApi
from pipeline.serving.pytorch import release as llmapi_release
from pipeline.serving.pytorch.llm import StandInLLM
from pipeline.serving.pytorch.openai_server import parse_args
from pipeline.serving.pytorch.smoke import OpenAIServer, ask_openai, run_release_smoke
from pipeline.serving.render import parse_model_config

MAX_TOKENS = 10
PROMPTS = ["The quick brown fox", "Once upon a time"]
# A profile's options as build writes them (pipeline.backends.trtllm_pytorch.options.llm_api_options).
OPTIONS = {
    "max_batch_size": 4,
    "max_num_tokens": 128,
    "max_input_len": 112,
    "max_seq_len": 128,
    "enable_chunked_prefill": True,
    "kv_cache_config": {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": True, "dtype": "auto"},
    "cuda_graph_config": {"batch_sizes": [1, 2, 4], "enable_padding": True},
}
CHECKPOINT_FILES = ("config.json", "model.safetensors", "generation_config.json")


def _write(root: Path, model_dir: Path, *, mount_path: str | None, decoupled: bool = True) -> dict[str, str]:
    files = {name: sha256_file(model_dir / name) for name in CHECKPOINT_FILES if (model_dir / name).is_file()}
    tokenizer = {p.name: sha256_file(p) for p in llmapi_release.tokenizer_files(model_dir)}
    return llmapi_release.write_release(
        root,
        model="tiny-mistral",
        checkpoint_dir=model_dir,
        checkpoint_sha256=files,
        tokenizer_dir=model_dir,
        tokenizer_sha256=tokenizer,
        options=OPTIONS,
        mount_path=mount_path,
        decoupled=decoupled,
    )


@pytest.fixture(scope="session")
def cpu_release(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("pytorch-release") / "release"
    _write(root, tiny_model_dir, mount_path=None)
    return root


# --- what publish writes ----------------------------------------------------------------------------


def test_llmapi_config_declares_upstreams_tensors_and_passes_tritons_schema(cpu_release):
    path = cpu_release / layout.LLMAPI_REPOSITORY / "tensorrt_llm" / "config.pbtxt"
    config = parse_model_config(path.read_text(), str(path), expected_name="tensorrt_llm")
    assert config.backend == "python"
    assert tuple(i.name for i in config.input) == LlmApi.INPUTS
    assert tuple(o.name for o in config.output) == LlmApi.OUTPUTS
    # Upstream leaves both to model.yaml's triton_config (set by auto_complete_config).
    assert config.max_batch_size == 0 and not config.HasField("model_transaction_policy")
    text_input = next(i for i in config.input if i.name == LlmApi.TEXT_INPUT)
    assert list(text_input.dims) == [-1]


def test_model_yaml_is_the_profiles_options_with_upstreams_keys(cpu_release, tmp_path, tiny_model_dir):
    model_yaml = yaml.safe_load(
        (cpu_release / layout.LLMAPI_REPOSITORY / "tensorrt_llm" / "1" / "model.yaml").read_text()
    )
    assert model_yaml["triton_config"] == {"max_batch_size": 0, "decoupled": True}
    assert model_yaml["backend"] == "pytorch"
    assert {k: model_yaml[k] for k in OPTIONS} == OPTIONS
    # On the CPU the checkpoint resolves against the model repository (llmapi/), as the stand-in reads it.
    checkpoint = cpu_release / layout.LLMAPI_REPOSITORY / model_yaml["model"]
    assert checkpoint.resolve() == layout.served_checkpoint_dir(cpu_release, "tiny-mistral").resolve()
    assert (checkpoint / "tokenizer_config.json").is_file() and (checkpoint / "model.safetensors").is_file()

    gpu = tmp_path / "gpu"
    _write(gpu, tiny_model_dir, mount_path="/models", decoupled=False)
    model_yaml = yaml.safe_load(
        (gpu / layout.LLMAPI_REPOSITORY / "tensorrt_llm" / "1" / "model.yaml").read_text()
    )
    assert model_yaml["model"] == "/models/checkpoint/tiny-mistral"
    assert model_yaml["triton_config"]["decoupled"] is False
    # On a GPU upstream's model.py serves it (mounted by the serve command): the project ships none.
    assert not (gpu / layout.LLMAPI_REPOSITORY / "tensorrt_llm" / "1" / "model.py").exists()
    command = llmapi_release.read_command(gpu)
    assert command["argv"] == [
        "trtllm-serve", "/models/checkpoint/tiny-mistral",
        "--backend", "pytorch",
        "--extra_llm_api_options", "/models/trtllm-serve/llm_api_options.yaml",
        "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip
    assert json.loads((gpu / "trtllm-serve" / "llm_api_options.yaml").read_text()) == OPTIONS


def test_the_bundles_command_parses_as_trtllm_serves_options(cpu_release):
    argv = llmapi_release.read_command(cpu_release)["argv"]
    assert argv[0] == "trtllm-serve"
    args = parse_args(argv[1:])
    assert (args.model, args.backend, args.host, args.port) == (
        "checkpoint/tiny-mistral",
        "pytorch",
        "0.0.0.0",
        8000,
    )
    assert args.extra_llm_api_options == "trtllm-serve/llm_api_options.yaml"


def test_docker_commands_mount_the_release_read_only():
    version = Path("/srv/releases/tiny/int4_awq/latency/3")
    argv = llmapi_release.docker_llmapi_argv(version, "/models")
    assert f"{version}:/models:ro" in argv
    assert argv[-1].endswith("exec tritonserver --model-repository=/tmp/llmapi")
    serve = llmapi_release.serve_argv("/models/checkpoint/m", "/models/trtllm-serve/llm_api_options.yaml")
    docker = llmapi_release.docker_serve_argv(version, "/models", serve)
    assert docker[-len(serve) :] == serve and f"{version}:/models:ro" in docker


# --- the reference runtime over a Hugging Face checkpoint --------------------------------------------


def test_reference_runtime_over_the_hf_checkpoint_matches_transformers(tiny_model_dir):
    """Both run float32 arithmetic on the same bf16 weights; they differ only in summation order.
    A float32 dot product of K terms reordered moves by at most ~K * 2^-24 of the sum of |terms|;
    with K <= the MLP width (a few hundred here) and a handful of layers compounding it, 1e-3 of
    the largest logit is a bound with an order of magnitude to spare."""
    import torch
    from transformers import AutoModelForCausalLM

    llm = StandInLLM(tiny_model_dir, OPTIONS)
    ids = llm.encode(PROMPTS[0])
    ours = llm.model.logits(torch.tensor([ids]))[0]
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    with torch.inference_mode():
        theirs = hf(torch.tensor([ids])).logits[0].float()
    assert torch.allclose(ours, theirs, atol=1e-3 * theirs.abs().max().item(), rtol=0)


# --- both consumers, served ---------------------------------------------------------------------------


@pytest.mark.triton
def test_smoke_serves_both_consumers_and_every_answer_is_the_references(cpu_release, tmp_path_factory):
    import shutil

    served = tmp_path_factory.mktemp("served") / "release"
    shutil.copytree(cpu_release, served)  # the servers write __pycache__: never into the release
    report = run_release_smoke(
        served,
        PROMPTS,
        max_tokens=MAX_TOKENS,
        work_dir=tmp_path_factory.mktemp("smoke"),
        reporter=RecordingReporter(),
    )
    routes = {c.route for c in report.checks}
    assert {
        "llmapi/generate",
        "llmapi/generate (prompt echoed)",
        "llmapi/generate_stream",
        "llmapi grpc stream (tritonclient)",
        "openai /v1/models",
        "openai /v1/completions",
        "openai /v1/completions (stream)",
        "openai /v1/chat/completions",
        "openai /v1/chat/completions (stream)",
    } == routes
    assert report.ok, report.failures
    echoed = next(c for c in report.checks if c.route == "llmapi/generate (prompt echoed)")
    assert echoed.got.startswith(PROMPTS[0]) and len(echoed.got) > len(PROMPTS[0])


@pytest.mark.triton
def test_the_trtllm_serve_stand_in_writes_past_the_end_token_with_ignore_eos(cpu_release):
    """trtllm-serve's CompletionRequest takes ignore_eos and hands it to SamplingParams.ignore_eos
    (tensorrt_llm/serve/openai_protocol.py @ 0076e939); aiperf sends it so every request writes its
    max_tokens. The end token stops a request unless it is set."""
    from pipeline.serving.pytorch.openai_server import CompletionRequest
    from pipeline.serving.pytorch.smoke import release_llm

    llm, name = release_llm(cpu_release)
    ids = llm.encode(PROMPTS[0])
    (first,) = llm.generate(ids, max_tokens=1).token_ids
    llm.tokenizer.eos_token_id = first  # the model's first answer is now its end token
    assert llm.tokenizer.eos_token_id == first
    stopped = llm.generate(ids, max_tokens=4)
    assert (stopped.token_ids, stopped.finish_reason) == ([], "stop")
    ignoring = llm.generate(ids, max_tokens=4, ignore_eos=True)
    assert (len(ignoring.token_ids), ignoring.token_ids[0], ignoring.finish_reason) == (4, first, "length")
    request = CompletionRequest.model_validate({"model": name, "prompt": "x", "ignore_eos": True})
    assert request.ignore_eos and request.refused() is None


def test_smoke_catches_an_answer_that_differs(cpu_release, tmp_path_factory, tiny_model_dir):
    """The check fails when the served checkpoint is not the one the reference ran: here the server
    serves the release, the reference a copy whose final norm is scaled."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    served = tmp_path_factory.mktemp("served-bad") / "release"
    shutil.copytree(cpu_release, served)
    other = tmp_path_factory.mktemp("other-model")
    for src in tiny_model_dir.iterdir():
        shutil.copyfile(src, other / src.name)
    tensors = load_file(other / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * torch.linspace(
        0.2, 3.0, tensors["model.norm.weight"].numel()
    ).to(tensors["model.norm.weight"].dtype)
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    with OpenAIServer(served, work_dir=tmp_path_factory.mktemp("openai")) as server:
        good = ask_openai(
            server.url, "tiny-mistral", StandInLLM(tiny_model_dir, OPTIONS), PROMPTS, max_tokens=MAX_TOKENS
        )
        bad = ask_openai(
            server.url, "tiny-mistral", StandInLLM(other, OPTIONS), PROMPTS, max_tokens=MAX_TOKENS
        )
    assert all(c.ok for c in good)
    assert not all(c.ok for c in bad if c.route != "openai /v1/models")


# --- publish: a PyTorch-backend build becomes the release, with the engine path's manifests and checks ---


def _as_pytorch_build(model_dir: Path):
    """engine_edit for publish_upstream.Upstream: the build's engine/ as the PyTorch backend writes it
    (pipeline.backends.trtllm_pytorch.build: the checkpoint's files, llm_api_options.yaml, build_info.json)."""

    def edit(engine_dir: Path) -> None:
        import shutil

        from pipeline.backends.trtllm_pytorch.options import OPTIONS_FILE

        for name in ("config.json", "rank0.safetensors", "rank0.engine"):
            (engine_dir / name).unlink(missing_ok=True)
        for name in CHECKPOINT_FILES:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, engine_dir / name)
        (engine_dir / OPTIONS_FILE).write_text(json.dumps(OPTIONS, indent=2) + "\n")

    return edit


def _publish(tmp_path, tiny_model_dir, *, target_lines: str | None, info, work: str = "work"):
    """The real publish stage on a PyTorch-backend build of the embedded default's trtllm-pytorch
    int8_wo/latency variant (on the CPU the reference runtime plays that backend)."""
    from publish_upstream import CPU_TARGET, Upstream, config_with

    from pipeline.core.store import ArtifactStore
    from pipeline.execution.driver import execute
    from pipeline.planning.tasks import plan_tasks, select_tasks

    config = config_with(tmp_path, **({} if target_lines is None else {CPU_TARGET: target_lines}))
    upstream = Upstream(
        tokenizer_dir=tiny_model_dir, engine_info=info, engine_edit=_as_pytorch_build(tiny_model_dir)
    )
    tasks = select_tasks(
        plan_tasks(config),
        {"publish"},
        precisions={"int8_wo"},
        profiles={"latency"},
        backends={"trtllm-pytorch"},
    )
    report = execute(
        config, ArtifactStore(tmp_path / work), tasks, reporter=RecordingReporter(), stages=upstream.stages()
    )
    return (
        config,
        report,
        config.publish.destination / "tiny-mistral" / "trtllm-pytorch" / "int8_wo" / "latency" / "current",
    )


def test_publish_writes_a_pytorch_build_as_a_verified_release_for_the_container(tmp_path, tiny_model_dir):
    from publish_upstream import a100_engine_info

    from pipeline.serving.release import check_version
    from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest

    info = a100_engine_info(backend="trtllm-pytorch")
    on_a100 = 'gpu = "a100-40gb"\n'
    config, report, version = _publish(tmp_path, tiny_model_dir, target_lines=on_a100, info=info)
    assert report.error is None, report.error
    manifest = ReleaseManifest.model_validate_json((version / RELEASE_MANIFEST).read_text())
    assert check_version(version.resolve()).ok
    assert manifest.serving.llmapi_repository == "llmapi"
    assert manifest.serving.gpt_model_path == "/models/checkpoint/tiny-mistral"
    assert manifest.serving.trtllm_serve == llmapi_release.read_command(version)["argv"]
    assert manifest.serving.trtllm_serve[:2] == ["trtllm-serve", "/models/checkpoint/tiny-mistral"]
    assert (manifest.engine.max_batch_size, manifest.engine.max_seq_len) == (
        OPTIONS["max_batch_size"],
        OPTIONS["max_seq_len"],
    )
    files = {f.path for f in manifest.files}
    assert (
        "checkpoint/tiny-mistral/model.safetensors" in files and "llmapi/tensorrt_llm/1/model.yaml" in files
    )
    # The options reach the consumers through their own files; build_info.json travels with the checkpoint.
    assert "checkpoint/tiny-mistral/build_info.json" in files
    assert "checkpoint/tiny-mistral/llm_api_options.yaml" not in files
    # smoke serves CPU releases only: this one is for its container, which the message names.
    from pipeline.core.errors import MissingDependencyError
    from pipeline.serving.smoke import run_pytorch_smoke

    with pytest.raises(MissingDependencyError, match=r"nvcr\.io/nvidia/tritonserver:26\.04"):
        run_pytorch_smoke(
            version, PROMPTS, max_tokens=1, work_dir=tmp_path / "smoke", reporter=RecordingReporter()
        )
    # A checkpoint loaded by another TensorRT-LLM than the container's is refused before anything is written.
    other = tmp_path / "other"
    other.mkdir()
    stale = a100_engine_info(backend="trtllm-pytorch", tensorrt_llm_version="1.1.0")
    _, report, version = _publish(other, tiny_model_dir, target_lines=on_a100, info=stale)
    assert report.error is not None and "tensorrt_llm 1.1.0" in str(report.error)
    assert not (other / "published" / "tiny-mistral").exists()


@pytest.mark.triton
def test_smoke_command_serves_a_published_cpu_release_both_ways(tmp_path, tiny_model_dir):
    from publish_upstream import REPO_ROOT, cpu_engine_info

    from pipeline.commands.smoke import smoke

    info = cpu_engine_info().model_copy(update={"backend": "reference-pytorch"})
    config, report, version = _publish(tmp_path, tiny_model_dir, target_lines=None, info=info)
    assert report.error is None, report.error
    prompts = REPO_ROOT / "calib_data" / "prompts.jsonl"
    config = config.model_copy(update={"gate": config.gate.model_copy(update={"prompts": prompts})})
    result = smoke(
        config,
        tmp_path / "work",
        reporter=RecordingReporter(),
        precisions=frozenset({"int8_wo"}),
        profiles=frozenset({"latency"}),
        backends=frozenset({"trtllm-pytorch"}),
        prompts=1,
        max_tokens=MAX_TOKENS,
    )
    assert result.error is None
    (report,) = result.reports
    assert report.repository == version and report.ok
    assert {c.route for c in report.checks} >= {
        "llmapi/generate_stream",
        "openai /v1/chat/completions (stream)",
    }


@pytest.mark.triton
def test_serve_keeps_a_published_cpu_release_running_through_its_llmapi_model(tmp_path, tiny_model_dir):
    """`serve --backend trtllm-pytorch` on the CPU: the release's llmapi repository on the bundled
    tritonserver, answering as the reference runtime does over HTTP, its stream and gRPC, until SIGINT;
    nothing is written into the version."""
    from publish_upstream import cpu_engine_info
    from test_serve import serve_cli

    from pipeline.serving.pytorch.smoke import ask_llmapi, release_llm
    from pipeline.serving.release import check_version

    info = cpu_engine_info().model_copy(update={"backend": "reference-pytorch"})
    config, report, current = _publish(tmp_path, tiny_model_dir, target_lines=None, info=info)
    assert report.error is None, report.error
    filters = ["--backend", "trtllm-pytorch", "--precision", "int8_wo", "--profile", "latency"]
    with serve_cli(config.source, tmp_path / "work", *filters) as served:
        assert served.url in served.wait_for("ready: ")
        llm, _ = release_llm(current.resolve())
        checks = ask_llmapi(
            served.url,
            f"127.0.0.1:{served.grpc}",
            llm,
            PROMPTS[:1],
            max_tokens=MAX_TOKENS,
            decoupled=True,
        )
        assert {c.route for c in checks} >= {"llmapi/generate", "llmapi grpc stream (tritonclient)"}
        assert all(c.ok for c in checks), [(c.route, c.expected, c.got) for c in checks if not c.ok]
        served.interrupt()
    version = current.resolve()
    assert check_version(version).ok and not list(version.rglob("__pycache__"))


# --- gpu-selftest's PyTorch rows (pipeline.serving.pytorch.gpu_check), TensorRT-LLM stood in for ---------


class _Output:
    def __init__(self, text: str) -> None:
        self.text = text


class _RequestOutput:
    def __init__(self, text: str, finished: bool) -> None:
        self.outputs, self.finished = [_Output(text)], finished


class _SamplingParams:
    def __init__(self, *, max_tokens: int, top_k: int) -> None:
        self.max_tokens, self.top_k = max_tokens, top_k


class _LLM:
    """tensorrt_llm.LLM as llmapi/llm.py shapes it: LLM(model, **options); generate(prompt, params) ->
    RequestOutput; generate_async(prompt, params, streaming=True) -> an async iterator of RequestOutputs
    whose outputs[0].text is cumulative (executor/result.py); shutdown(). The reference runtime
    computes (StandInLLM)."""

    deltas = False  # True: a broken stand-in that streams deltas, which the streamed row must catch

    def __init__(self, model: str, **options) -> None:
        self.llm = StandInLLM(Path(model), options)

    def generate(self, prompt, params):
        done = self.llm.generate(self.llm.encode(prompt), max_tokens=params.max_tokens, top_k=params.top_k)
        return _RequestOutput(done.text, True)

    async def generate_async(self, prompt, params, streaming=False):
        steps = []
        self.llm.generate(
            self.llm.encode(prompt),
            max_tokens=params.max_tokens,
            top_k=params.top_k,
            on_step=lambda c: steps.append((c.text_diff if self.deltas else c.text, c.finished)),
        )
        for text, finished in steps:
            yield _RequestOutput(text, finished)

    def shutdown(self) -> None:
        pass


@pytest.fixture
def tensorrt_llm_on_path(monkeypatch, tmp_path):
    """A tensorrt_llm module with _LLM, and a `trtllm-serve` on PATH that runs the CPU stand-in."""
    import sys
    import types

    module = types.ModuleType("tensorrt_llm")
    module.LLM, module.SamplingParams = _LLM, _SamplingParams
    monkeypatch.setitem(sys.modules, "tensorrt_llm", module)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "trtllm-serve"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m pipeline.serving.pytorch.openai_server "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return module


def test_gpu_check_rows_load_generate_stream_and_ask_the_bundles_trtllm_serve(
    cpu_release, tmp_path, tensorrt_llm_on_path, monkeypatch
):
    import shutil

    from pipeline.serving.pytorch import gpu_check

    release = tmp_path / "release"
    shutil.copytree(cpu_release, release)
    out = tmp_path / "rows.json"
    assert gpu_check.main([str(release), PROMPTS[0], str(MAX_TOKENS), str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == [
        gpu_check.LOAD,
        gpu_check.GENERATE,
        gpu_check.STREAM,
        gpu_check.OPENAI,
    ]
    assert all(r["ok"] for r in rows), rows

    monkeypatch.setattr(_LLM, "deltas", True)
    assert gpu_check.main([str(release), PROMPTS[0], str(MAX_TOKENS), str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert rows[gpu_check.STREAM]["ok"] is False and rows[gpu_check.GENERATE]["ok"] is True


def test_the_cpu_llm_takes_upstreams_sampling_fields_and_refuses_the_rest(tiny_model_dir):
    """StandInLLM.generate takes tensorrt_llm.SamplingParams' own keywords (sampling_params.py @
    000a01de): a name upstream lacks is refused as its kw_only dataclass refuses it, a field the
    reference runtime cannot act on is refused by name, penalties and top_p are acted on, and a stop
    token ends the output without being returned (include_stop_str_in_output defaults to False,
    executor/result.py @ 005bc848)."""
    from pipeline.core.errors import InputError
    from pipeline.runtime.sampling import Penalties, SamplingParams

    llm = StandInLLM(tiny_model_dir, OPTIONS)
    ids = llm.encode(PROMPTS[0])
    with pytest.raises(InputError, match="SamplingParams has no field random_seed"):
        llm.generate(ids, max_tokens=4, random_seed=1)
    with pytest.raises(InputError, match="use_beam_search=True is not supported by the CPU stand-in"):
        llm.generate(ids, max_tokens=4, use_beam_search=True)
    free = llm.generate(ids, max_tokens=8).token_ids
    options = {
        "temperature": 0.8,
        "top_p": 0.7,
        "seed": 3,
        "repetition_penalty": 1.5,
        "presence_penalty": 0.5,
    }
    got = llm.generate(ids, max_tokens=8, **options).token_ids
    sampling = SamplingParams(
        temperature=0.8, top_p=0.7, seed=3, penalties=Penalties(repetition=1.5, presence=0.5)
    )
    assert (
        got
        == llm.model.generate([ids], max_new_tokens=8, end_id=llm.tokenizer.eos_token_id, sampling=sampling)[
            0
        ]
    )
    stopped = llm.generate(ids, max_tokens=8, stop_token_ids=[free[2]])
    assert stopped.token_ids == free[: free.index(free[2])] and stopped.finish_reason == "stop"
