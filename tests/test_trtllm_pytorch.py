"""The trtllm-pytorch backend: its column of the format table, the config refusals it brings, the LLM API
options a profile means, its build (the options loaded once through a stand-in for tensorrt_llm.LLM)
and the dry run that shows the options.

Upstream read (NVIDIA/TensorRT-LLM; the v1.2.1 tag's files are not in the stored index, so 1.2-era
versions and the newest stored ones bracket it; tensorrtllm_backend r26.04 @ ce68ff5f pins
release/1.2.1, submodule 2fdb9e66):
- _torch/modules/linear.py get_quant_method (1.2-era stored version; newest stored @ ed53795b): FP8,
  NVFP4, weight-only per channel (WeightOnlyQuantLinearMethod), W4A16/W4A8 AWQ; anything else raises
  "unsupported quant mode": no W8A8 SmoothQuant;
- docs/source/features/quantization.md @ 09d4c79b, Hardware Support Matrix: Ampere runs W4A16 AWQ, FP8
  (per tensor) from Ada;
- llmapi/llm_args.py (1.2.0rc-era version; main @ 0004396720054fd8e205cbf616f21f0b57c6b412):
  StrictBaseModel forbids extra fields; BaseLlmArgs max_batch_size, max_num_tokens, max_input_len
  (default 1024 in the newest stored version, None in older ones), max_seq_len,
  kv_cache_config, enable_chunked_prefill; KvCacheConfig free_gpu_memory_fraction (a float in [0, 1],
  default 0.9), enable_block_reuse, dtype; TorchLlmArgs cuda_graph_config (CudaGraphConfig batch_sizes,
  max_batch_size, enable_padding; its validator sorts batch_sizes and sets max_batch_size to their
  maximum); sync_quant_config_with_kv_cache_config_dtype takes only dtype 'fp8';
- llmapi/llm.py BaseLLM.__init__: a keyword that is no TorchLlmArgs field raises
  ValueError("LLM got invalid argument: <key>"), then self.args = TorchLlmArgs.from_kwargs(...)
  (pydantic validation).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field
from test_build import A100, GOOD_ENV, TINY_ON_A100, _run_builds, _write_dummy_checkpoint, _write_hf_config

from pipeline.backends import BACKENDS
from pipeline.backends.trtllm_engine.environment import preflight_problems
from pipeline.backends.trtllm_pytorch import load
from pipeline.backends.trtllm_pytorch.options import (
    LLM_API_FIELDS,
    OPTIONS_FILE,
    cuda_graph_batch_sizes,
    llm_api_options,
    unknown_fields,
)
from pipeline.cli import main
from pipeline.core.errors import ConfigError
from pipeline.core.store import ArtifactStore
from pipeline.facts.config import parse_config
from pipeline.facts.formats import Precision
from pipeline.facts.targets import TARGETS
from pipeline.planning.memory import KV_FREE_FRACTION, find_architecture, plan_profile
from pipeline.planning.tasks import plan_tasks, select_tasks

PYTORCH_ON_A100 = TINY_ON_A100.replace(
    'gpu = "a100-40gb"', 'gpu = "a100-40gb"\nbackend = "trtllm-pytorch"'
).replace('precisions = ["int8_sq"]', 'precisions = ["int8_wo", "int4_awq"]')


# --- the stand-in for tensorrt_llm.LLM, shaped as llm_args.py and llm.py are (see the docstring) ------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _KvCacheConfig(_Strict):
    enable_block_reuse: bool = True
    free_gpu_memory_fraction: float = Field(default=0.9, ge=0, le=1)
    dtype: str = "auto"
    tokens_per_block: int = 32


class _CudaGraphConfig(_Strict):
    batch_sizes: list[int] | None = None
    max_batch_size: int = 0
    enable_padding: bool = False

    def model_post_init(self, _context) -> None:
        if self.batch_sizes:
            self.batch_sizes = sorted(self.batch_sizes)
            self.max_batch_size = self.max_batch_size or max(self.batch_sizes)


class _TorchLlmArgs(_Strict):
    model: str
    backend: Literal["pytorch"] = "pytorch"
    max_batch_size: int | None = None
    max_input_len: int | None = 1024  # BaseLlmArgs' default in the newest stored llm_args.py
    max_seq_len: int | None = None
    max_num_tokens: int | None = 8192
    enable_chunked_prefill: bool = False
    kv_cache_config: _KvCacheConfig = Field(default_factory=_KvCacheConfig)
    cuda_graph_config: _CudaGraphConfig | None = Field(default_factory=_CudaGraphConfig)


class StandInLLM:
    loaded: list[StandInLLM] = []

    def __init__(self, model: str, **kwargs) -> None:
        for key in kwargs:
            if key not in _TorchLlmArgs.model_fields:
                raise ValueError(f"LLM got invalid argument: {key}")
        self.args = _TorchLlmArgs(model=model, **kwargs)
        self.shut_down = False
        StandInLLM.loaded.append(self)

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.fixture
def tensorrt_llm(monkeypatch):
    StandInLLM.loaded = []
    module = types.ModuleType("tensorrt_llm")
    module.LLM, module.__version__ = StandInLLM, "1.2.1"
    monkeypatch.setitem(sys.modules, "tensorrt_llm", module)
    return module


# --- the format table -------------------------------------------------------------------------------


def test_contract_pytorch_column_of_the_format_table():
    pytorch, engine = BACKENDS["trtllm-pytorch"], BACKENDS["trtllm-engine"]
    for name in ("a100-40gb", "a100-80gb", "a10g", "l4", "h100-80gb", "h200"):
        target = TARGETS[name]
        for precision in (Precision.fp16, Precision.bf16, Precision.int8_wo, Precision.int4_awq):
            assert pytorch.format_problem(precision, "fp16", target) is None
        gap = pytorch.format_problem(Precision.int8_sq, "fp16", target)
        assert gap.part == "precision" and "the trtllm-engine backend runs it" in gap.problem
        gap = pytorch.format_problem(Precision.int8_wo, "int8", target)
        assert gap.part == "kv_cache" and "the trtllm-engine backend runs it" in gap.problem
        assert engine.format_problem(Precision.int8_sq, "int8", target) is None
        fp8 = pytorch.format_problem(Precision.fp8, "fp16", target)
        assert (fp8 is None) == (target.sm >= 89)
        assert (engine.format_problem(Precision.fp8, "fp16", target) is None) == (target.sm >= 89)
    assert pytorch.unavailable_on(TARGETS["cpu"]) is not None


@pytest.mark.parametrize(
    "change, field",
    [
        (
            ('precisions = ["int8_wo", "int4_awq"]', 'precisions = ["int4_awq", "int8_sq"]'),
            "quantization.precisions[1]",
        ),
        (
            ("[[profiles]]", '[quantization]\nkv_cache_dtype = "int8"\n\n[[profiles]]'),
            "quantization.kv_cache_dtype",
        ),
    ],
)
def test_int8_sq_or_int8_kv_on_the_pytorch_backend_is_one_line_exit_2(tmp_path, capsys, change, field):
    text = PYTORCH_ON_A100.replace(*change, 1)
    if "kv_cache_dtype" in text:
        text = text.replace('[quantization]\nprecisions = ["int8_wo", "int4_awq"]\n', "", 1).replace(
            "[quantization]\n", '[quantization]\nprecisions = ["int8_wo", "int4_awq"]\n', 1
        )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "job.toml", tmp_path)
    assert info.value.field == field and "the trtllm-engine backend runs it" in info.value.problem
    config = tmp_path / "job.toml"
    config.write_text(text)
    assert main(["plan", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith(f"ERROR job.toml: {field}: ") or f"{field}: " in err.splitlines()[0]
    assert "the trtllm-engine backend runs it" in err.splitlines()[0] and "Traceback" not in err


def test_the_pytorch_backend_is_refused_on_the_cpu(tmp_path):
    text = PYTORCH_ON_A100.replace('gpu = "a100-40gb"', 'gpu = "cpu"')
    with pytest.raises(ConfigError) as info:
        parse_config(text, "job.toml", tmp_path)
    assert info.value.field == "target.backend"


# --- the LLM API options ------------------------------------------------------------------------------


def _plans(tmp_path, text=PYTORCH_ON_A100):
    config = parse_config(text, "job.toml", tmp_path)
    arch = find_architecture(config)
    return config, {
        (p.value, prof.name): plan_profile(config, arch, b, p, prof.name)
        for b, p in config.variants
        for prof in config.profiles
    }


def test_contract_options_of_a_profile_are_what_it_means_and_load_upstream(tmp_path, tensorrt_llm):
    config, plans = _plans(tmp_path)
    plan = plans[("int4_awq", "throughput")]
    options = llm_api_options(config, config.profile("throughput"), plan)
    assert options == {
        "max_batch_size": 8,
        "max_num_tokens": plan.max_num_tokens,
        "max_input_len": 96,
        "max_seq_len": 128,
        "enable_chunked_prefill": True,
        "kv_cache_config": {
            "free_gpu_memory_fraction": KV_FREE_FRACTION,
            "enable_block_reuse": config.publish.enable_kv_cache_reuse,
            "dtype": "auto",
        },
        "cuda_graph_config": {"batch_sizes": [1, 2, 4, 8], "enable_padding": True},
    }
    llm = tensorrt_llm.LLM(model="ckpt", **options)  # upstream validates every name and value
    assert llm.args.cuda_graph_config.max_batch_size == 8
    with pytest.raises(ValueError, match="invalid argument: max_batch_szie"):
        tensorrt_llm.LLM(model="ckpt", max_batch_szie=8)
    with pytest.raises(ValueError, match="free_gpu_memory_fraction"):
        tensorrt_llm.LLM(model="ckpt", kv_cache_config={"free_gpu_memory_fraction": 1.5})
    # The vendored names are the stand-in's (upstream's) names.
    assert LLM_API_FIELDS[""] <= set(_TorchLlmArgs.model_fields)
    assert LLM_API_FIELDS["kv_cache_config"] <= set(_KvCacheConfig.model_fields)
    assert LLM_API_FIELDS["cuda_graph_config"] <= set(_CudaGraphConfig.model_fields)
    assert unknown_fields({"max_batch_size": 1, "kv_cache_config": {"fraction": 0.9}}) == [
        "kv_cache_config.fraction"
    ]


def test_cuda_graph_batch_sizes_end_at_the_profile_batch():
    assert cuda_graph_batch_sizes(1) == [1]
    assert cuda_graph_batch_sizes(6) == [1, 2, 4, 6]
    assert cuda_graph_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]


def test_fp8_asks_for_an_fp8_kv_cache_on_hopper(tmp_path):
    text = PYTORCH_ON_A100.replace('"a100-40gb"', '"h100-80gb"').replace('["int8_wo", "int4_awq"]', '["fp8"]')
    config, plans = _plans(tmp_path, text)
    options = llm_api_options(config, config.profile("latency"), plans[("fp8", "latency")])
    assert options["kv_cache_config"]["dtype"] == "fp8"


def test_a_profile_the_kv_cache_cannot_hold_is_refused_naming_it(tmp_path, capsys):
    text = PYTORCH_ON_A100.replace(
        "max_batch_size = 8\nmax_input_len = 96\nmax_seq_len = 128",
        "max_batch_size = 1000000\nmax_input_len = 96\nmax_seq_len = 512",
    )
    config = tmp_path / "job.toml"
    config.write_text(text)
    (tmp_path / "calib_data").symlink_to(Path(__file__).parents[1] / "calib_data")
    assert main(["build", "--config", str(config), "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err.splitlines()[0]
    assert "profiles[1]" in err and "KV cache" in err


# --- the build ----------------------------------------------------------------------------------------


class FakeHost:
    """The build host's child processes: the probe (GOOD_ENV on an A100, no trtllm-build needed) and the
    load, whose module runs here against the stand-in LLM."""

    def __init__(self) -> None:
        self.loads: list[list[str]] = []

    def __call__(self, argv, *, stdout, stderr, env, cwd, check):
        if argv[1] == "-c":
            report = GOOD_ENV.model_copy(update={"gpus": (A100,), "trtllm_build": None})
            Path(argv[3]).write_text(json.dumps(report.model_dump(mode="json")))
            return subprocess.CompletedProcess(argv, 0)
        assert argv[1:3] == ["-m", "pipeline.backends.trtllm_pytorch.load"], argv
        self.loads.append(argv)
        try:
            return subprocess.CompletedProcess(argv, load.main(argv[3:]))
        except Exception as exc:  # a child Python prints the traceback and exits 1
            stdout.write(f"Traceback (most recent call last):\n{exc!r}\n")
            return subprocess.CompletedProcess(argv, 1)


def test_contract_build_writes_the_options_beside_the_checkpoint_and_loads_them_once(tmp_path, tensorrt_llm):
    config = parse_config(PYTORCH_ON_A100, "job.toml", tmp_path)
    store = ArtifactStore(tmp_path / "work")
    tasks = select_tasks(plan_tasks(config), {"build"})
    host = FakeHost()
    report = _run_builds(config, store, tasks, _write_hf_config, _write_dummy_checkpoint, host)
    assert report.error is None, report.error
    builds = [r for r in report.results if r.task.stage == "build"]
    assert len(builds) == 4 and len(host.loads) == 4 and len(StandInLLM.loaded) == 4
    assert all(llm.shut_down for llm in StandInLLM.loaded)
    for result in builds:
        engine = result.path / "engine"
        options = json.loads((engine / OPTIONS_FILE).read_text())
        assert options["max_seq_len"] == config.profile(result.task.profile).max_seq_len
        assert (engine / "rank0.safetensors").read_bytes() == b"weights"  # the checkpoint, linked
        record = store.get("build", result.task.variant, result.key).manifest.record
        assert (
            record["engine"]["backend"] == "trtllm-pytorch"
            and record["engine"]["tensorrt_llm_version"] == "1.2.1"
        )
        assert record["command"][1:3] == ["-m", "pipeline.backends.trtllm_pytorch.load"]
        reported = json.loads((result.path / "llm_load.json").read_text())["options"]
        assert reported["kv_cache_config"]["free_gpu_memory_fraction"] == KV_FREE_FRACTION
    # What the stand-in's loaded args say is what the options asked for.
    assert {llm.args.max_batch_size for llm in StandInLLM.loaded} == {1, 8}


def test_a_load_that_upstream_refuses_fails_the_build(tmp_path, tensorrt_llm, monkeypatch):
    config = parse_config(PYTORCH_ON_A100, "job.toml", tmp_path)
    store = ArtifactStore(tmp_path / "work")
    tasks = select_tasks(plan_tasks(config), {"build"})
    monkeypatch.setattr(_TorchLlmArgs, "model_fields", {"model": None})  # a release without these fields
    report = _run_builds(config, store, tasks, _write_hf_config, _write_dummy_checkpoint, FakeHost())
    assert report.error is not None and "llm-load.log" in str(report.error)
    assert not list((tmp_path / "work" / "store").glob("build/*/*/*/[!.]*"))  # no build artifact


def test_the_pytorch_build_host_needs_no_trtllm_build():
    env = GOOD_ENV.model_copy(update={"trtllm_build": None})
    kwargs = dict(allow_arch_mismatch=False, ram_needed=0, ram_available=1, disk_needed=0, disk_free=1)
    assert preflight_problems(env, TARGETS["a100-40gb"], needs_trtllm_build=False, **kwargs) == []
    assert preflight_problems(env, TARGETS["a100-40gb"], **kwargs) == [
        "the trtllm-build command is not on PATH"
    ]


# --- the dry run --------------------------------------------------------------------------------------


def test_dry_run_shows_each_profiles_options_file(tmp_path, capsys, monkeypatch):
    config = tmp_path / "job.toml"
    config.write_text(PYTORCH_ON_A100)
    (tmp_path / "calib_data").symlink_to(Path(__file__).parents[1] / "calib_data")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the dry run started a process"))
    assert (
        main(["run", "--dry-run", "--json", "--config", str(config), "--work-dir", str(tmp_path / "w")]) == 0
    )
    from pipeline.commands.dryrun import DryRun

    dry = DryRun.model_validate_json(capsys.readouterr().out)
    parsed = parse_config(PYTORCH_ON_A100, "job.toml", tmp_path)
    _, plans = _plans(tmp_path)
    builds = {t.id: t.commands for t in dry.tasks if t.stage == "build"}
    assert len(builds) == 4
    for task_id, (command,) in builds.items():
        backend, precision, profile = task_id.split("[")[1].rstrip("]").split("/")
        assert backend == "trtllm-pytorch"
        (file,) = command.files
        assert file.path.endswith(f"/engine/{OPTIONS_FILE}")
        assert json.loads(file.text) == llm_api_options(
            parsed, parsed.profile(profile), plans[(precision, profile)]
        )
    # Each served variant: trtllm-serve on the release's bundle, and Triton's llmapi repository in a note.
    assert len(dry.serve) == 4
    for command in dry.serve:
        i = command.argv.index("trtllm-serve")
        assert command.argv[i : i + 2] == ["trtllm-serve", "/models/checkpoint/tiny-mistral"]
        assert command.argv[i + 2 : i + 6] == [
            "--backend", "pytorch", "--extra_llm_api_options", "/models/trtllm-serve/llm_api_options.yaml",
        ]  # fmt: skip
        assert any(a.endswith(":/models:ro") for a in command.argv[:i])
        (note,) = command.notes
        assert "tritonserver --model-repository=/tmp/llmapi" in note
    assert main(["run", "--dry-run", "--config", str(config), "--work-dir", str(tmp_path / "w")]) == 0
    assert '"max_num_tokens":' in capsys.readouterr().out
