"""The build stage: trtllm-build argv (contract), preflight, GPU builds against a stand-in trtllm-build
process, the cpu-reference build end to end, engines/ links and the runners.

Contract tests replace only the TensorRT-LLM process (the probe's child Python and trtllm-build).
They were checked against TensorRT-LLM 1.2.x sources: tensorrt_llm/commands/build.py
(parse_arguments, main), tensorrt_llm/plugin/plugin.py (PluginConfig, cli_plugin_args,
add_plugin_argument), cpp/include/tensorrt_llm/runtime/modelConfig.h (KVCacheTypeFromString).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_checkpoints import tiny_checkpoint

from pipeline.cli import main
from pipeline.config import BuildSection, Precision, load_config, parse_config
from pipeline.errors import ExitCode, InputError, MissingDependencyError, StageError, ToolFailedError
from pipeline.executor import TaskState, execute
from pipeline.plan import KNOWN_ARCHITECTURES, plan_memory
from pipeline.reporting import RecordingReporter
from pipeline.runners import ReferenceRunner, load_runner, runtime_mismatches
from pipeline.stages import build
from pipeline.stages.base import RunOptions, StageOutcome
from pipeline.store import ArtifactStore
from pipeline.targets import TARGETS
from pipeline.tasks import plan_tasks, select_tasks
from pipeline.trtllm.argv import trtllm_build_argv
from pipeline.trtllm.engine import EngineInfo, supports_chunked_context
from pipeline.trtllm.environment import BuildEnvironment, GpuInfo, preflight_problems, probe_environment
from pipeline.trtllm.network import check_onnx_files

MISTRAL = KNOWN_ARCHITECTURES["mistralai/Mistral-7B-Instruct-v0.3"]
GIB = 1024**3


# --- trtllm-build 1.2.1's command line, as far as the pipeline uses it ---------------------------


def _kv_cache_type(value: str) -> str:
    # KVCacheType.from_string upper-cases its argument (cpp/include/tensorrt_llm/runtime/modelConfig.h).
    if value.upper() not in ("CONTINUOUS", "PAGED", "DISABLED"):
        raise argparse.ArgumentTypeError(f"Invalid KV cache type: {value}")
    return value.upper()


def trtllm_build_parser() -> argparse.ArgumentParser:
    """The flags of trtllm-build 1.2.1 the pipeline passes, with their types and choices."""
    parser = argparse.ArgumentParser(prog="trtllm-build", allow_abbrev=False)
    # tensorrt_llm/commands/build.py, parse_arguments()
    parser.add_argument("--checkpoint_dir", type=str)
    parser.add_argument("--output_dir", type=str, default="engine_outputs")
    parser.add_argument("--max_batch_size", type=int, default=2048)
    parser.add_argument("--max_input_len", type=int, default=1024)
    parser.add_argument("--max_seq_len", "--max_decoder_seq_len", dest="max_seq_len", type=int)
    parser.add_argument("--max_num_tokens", type=int, default=8192)
    parser.add_argument("--opt_num_tokens", type=int)
    parser.add_argument("--kv_cache_type", type=_kv_cache_type, default=argparse.SUPPRESS)
    parser.add_argument("--input_timing_cache", type=str)
    parser.add_argument("--output_timing_cache", type=str, default="model.cache")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--log_level", choices=["internal_error", "error", "warning", "info", "verbose", "debug", "trace"]
    )
    parser.add_argument("--visualize_network", type=str)
    parser.add_argument("--gather_context_logits", action="store_true")
    # tensorrt_llm/plugin/plugin.py: PluginConfig fields named in cli_plugin_args, added by add_plugin_argument
    # (Optional[Literal[...]] -> those choices + "disable"; bool -> "enable"/"disable").
    parser.add_argument(
        "--gemm_plugin",
        choices=["auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", "disable"],
    )
    parser.add_argument(
        "--gpt_attention_plugin", choices=["auto", "float16", "float32", "bfloat16", "int32", "disable"]
    )
    for feature in ("context_fmha", "use_paged_context_fmha", "remove_input_padding", "multiple_profiles"):
        parser.add_argument("--" + feature, choices=["enable", "disable"])
    return parser


TAIL = [
    "--kv_cache_type", "paged",
    "--gemm_plugin", "auto",
    "--gpt_attention_plugin", "auto",
    "--context_fmha", "enable",
    "--use_paged_context_fmha", "enable",
    "--remove_input_padding", "enable",
    "--multiple_profiles", "enable",
    "--gather_context_logits",
    "--workers", "1",
    "--input_timing_cache", "/w/timing.cache",
    "--output_timing_cache", "/w/timing.cache",
    "--log_level", "info",
]  # fmt: skip


def _real_job_argv(repo_root: Path, profile_name: str, **extra) -> list[str]:
    config = load_config(repo_root / "pipeline.toml")
    profile = config.profile(profile_name)
    plan = plan_memory(MISTRAL, Precision.int8_sq, "fp16", TARGETS["a100-40gb"], profile)
    return trtllm_build_argv(
        Path("/ckpt"), Path("/out/engine"), profile, config.build, plan, Path("/w/timing.cache"), **extra
    )


@pytest.mark.parametrize(
    ("name", "batch", "input_len", "seq_len", "tokens"),
    [
        ("latency", 1, 7168, 8192, 7168),
        ("throughput", 64, 1536, 2048, 8192),
        ("long-context", 4, 30720, 32768, 8192),
    ],
)
def test_contract_default_profile_argv(repo_root, name, batch, input_len, seq_len, tokens):
    argv = _real_job_argv(repo_root, name)
    assert argv == [
        "trtllm-build",
        "--checkpoint_dir", "/ckpt",
        "--output_dir", "/out/engine",
        "--max_batch_size", str(batch),
        "--max_input_len", str(input_len),
        "--max_seq_len", str(seq_len),
        "--max_num_tokens", str(tokens),
        *TAIL,
    ]  # fmt: skip
    args = trtllm_build_parser().parse_args(argv[1:])
    assert (args.max_batch_size, args.max_input_len, args.max_seq_len, args.max_num_tokens) == (
        batch,
        input_len,
        seq_len,
        tokens,
    )
    assert args.kv_cache_type == "PAGED" and args.gather_context_logits and args.opt_num_tokens is None


def test_contract_parser_rejects_a_renamed_flag():
    with pytest.raises(SystemExit):
        trtllm_build_parser().parse_args(["--max_output_len", "10"])  # removed from trtllm-build long ago
    with pytest.raises(SystemExit):
        trtllm_build_parser().parse_args(["--use_paged_context_fmha", "true"])  # enable/disable only


def test_contract_visualize_and_opt_num_tokens(repo_root):
    argv = _real_job_argv(repo_root, "latency", visualize_dir=Path("/out/network"), workers=2)
    args = trtllm_build_parser().parse_args(argv[1:])
    assert args.visualize_network == "/out/network" and args.workers == 2
    profile = (
        load_config(repo_root / "pipeline.toml").profile("latency").model_copy(update={"opt_num_tokens": 256})
    )
    plan = plan_memory(MISTRAL, Precision.int8_sq, "fp16", TARGETS["a100-40gb"], profile)
    single = BuildSection(multiple_profiles=False)
    argv = trtllm_build_argv(Path("/c"), Path("/o"), profile, single, plan, Path("/t"))
    args = trtllm_build_parser().parse_args(argv[1:])
    assert args.opt_num_tokens == 256 and args.multiple_profiles == "disable"


# --- preflight ----------------------------------------------------------------------------------

A100 = GpuInfo(name="NVIDIA A100-SXM4-40GB", sm=80, memory_bytes=40 * GIB)
A10G = GpuInfo(name="NVIDIA A10G", sm=86, memory_bytes=24 * GIB)
GOOD_ENV = BuildEnvironment(
    tensorrt_llm="1.2.1",
    tensorrt="10.14.1.48",
    cuda="13.0",
    torch="2.9.0",
    trtllm_build="/usr/local/bin/trtllm-build",
    gpus=(A100,),
)


def _problems(env=GOOD_ENV, *, allow=False, ram=64 * GIB, disk=500 * GIB):
    return preflight_problems(
        env,
        TARGETS["a100-40gb"],
        allow_arch_mismatch=allow,
        ram_needed=16 * GIB,
        ram_available=ram,
        disk_needed=9 * GIB,
        disk_free=disk,
    )


def test_preflight_accepts_the_pinned_container_on_an_a100():
    assert _problems() == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tensorrt_llm": None}, "TensorRT-LLM is not installed"),
        ({"tensorrt_llm": "1.1.0"}, "TensorRT-LLM 1.1.0 is installed, the pipeline is pinned to 1.2.1"),
        ({"gpus": ()}, "no CUDA GPU is visible"),
        ({"gpus": (A10G,)}, "GPU 0 (NVIDIA A10G) is sm86 but target a100-40gb is sm80"),
        ({"trtllm_build": None}, "trtllm-build command is not on PATH"),
    ],
)
def test_preflight_names_what_is_missing(change, words):
    problems = _problems(GOOD_ENV.model_copy(update=change))
    assert problems and words in problems[0]


def test_preflight_arch_mismatch_can_be_allowed_and_checks_ram_and_disk():
    assert _problems(GOOD_ENV.model_copy(update={"gpus": (A10G,)}), allow=True) == []
    assert "16.0 GiB of free host RAM" in _problems(ram=8 * GIB)[0]
    assert "9.0 GiB of free disk" in _problems(disk=1 * GIB)[0]


def test_probe_on_this_machine_finds_no_tensorrt_llm(tmp_path):
    if shutil.which("trtllm-build"):
        pytest.skip("this machine has TensorRT-LLM")
    env = probe_environment(tmp_path / "probe.log")
    assert env.tensorrt_llm is None and env.gpus == ()
    assert preflight_problems(
        env,
        TARGETS["a100-40gb"],
        allow_arch_mismatch=False,
        ram_needed=0,
        ram_available=0,
        disk_needed=0,
        disk_free=0,
    ) == ["TensorRT-LLM is not installed"]


TINY_ON_A100 = """
[model]
name = "tiny-mistral"
source = "tiny"

[target]
gpu = "a100-40gb"

[quantization]
precisions = ["int8_sq"]

[[profiles]]
name = "latency"
max_batch_size = 1
max_input_len = 192
max_seq_len = 256

[[profiles]]
name = "throughput"
max_batch_size = 8
max_input_len = 96
max_seq_len = 128
"""


def test_build_without_tensorrt_llm_is_one_line_exit_3_before_any_work(repo_root, tmp_path, capsys):
    if shutil.which("trtllm-build"):
        pytest.skip("this machine has TensorRT-LLM")
    config = tmp_path / "gpu.toml"
    config.write_text(TINY_ON_A100)
    (tmp_path / "calib_data").symlink_to(repo_root / "calib_data")  # the config's data files exist
    assert main(["run", "--config", str(config), "--work-dir", str(tmp_path / "work")]) == 3
    err = capsys.readouterr().err
    error = err.splitlines()[0]  # one line: what is missing and the container to use
    assert error.startswith("ERROR TensorRT-LLM is not installed: GPU builds run inside")
    assert "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3" in error
    assert err.count("ERROR") == 1 and "Traceback" not in err
    assert not (tmp_path / "work" / "store").exists()  # not even fetch ran


def test_build_refuses_a_profile_that_does_not_fit_before_any_work(repo_root, tmp_path, capsys):
    text = (repo_root / "pipeline.toml").read_text().replace("max_batch_size = 4\n", "max_batch_size = 64\n")
    config = tmp_path / "big.toml"
    config.write_text(text)
    (tmp_path / "calib_data").symlink_to(repo_root / "calib_data")  # the config's data files exist
    assert main(["build", "--config", str(config), "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "profiles[2]" in err and "'long-context' does not fit a100-40gb" in err
    assert "largest batch at max_seq_len 32768: 6" in err
    assert not (tmp_path / "work" / "store").exists()


def test_cpu_reference_build_refuses_a_profile_that_does_not_fit(repo_root, tmp_path, capsys):
    text = (repo_root / "pipeline" / "defaults" / "tiny.toml").read_text()
    config = tmp_path / "tiny.toml"
    config.write_text(text.replace("max_batch_size = 8\n", "max_batch_size = 400000\n"))
    (tmp_path / "calib_data").symlink_to(repo_root / "calib_data")  # the config's data files exist
    assert main(["build", "--config", str(config), "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "profiles[1]" in err and "'throughput' does not fit cpu-reference" in err
    assert not (tmp_path / "work" / "store").exists()


# --- GPU builds against a stand-in trtllm-build --------------------------------------------------


class FakeTensorRTLLM:
    """The TensorRT-LLM process: the probe's child Python and trtllm-build, parsed with 1.2.1's flags."""

    def __init__(self, *, gpu: GpuInfo = A100, exit_code: int = 0, onnx: str | None = "valid", seq_len=None):
        self.gpu = gpu
        self.exit_code = exit_code
        self.onnx = onnx
        self.seq_len = seq_len  # what the engine config claims (None: what was asked)
        self.probes = 0
        self.builds: list[list[str]] = []

    def __call__(self, argv, *, stdout, stderr, env, cwd, check):
        if argv[1] == "-c":
            self.probes += 1
            report = GOOD_ENV.model_copy(update={"gpus": (self.gpu,)}).model_dump(mode="json")
            Path(argv[3]).write_text(json.dumps(report))
            return subprocess.CompletedProcess(argv, 0)
        self.builds.append(argv)
        args = trtllm_build_parser().parse_args(argv[1:])
        stdout.write("[TensorRT-LLM] TensorRT LLM version: 1.2.1\nbuilding...\n")
        if args.multiple_profiles == "enable" and args.opt_num_tokens is not None:
            return subprocess.CompletedProcess(argv, 1)  # trtllm-build main() raises RuntimeError
        if self.exit_code:
            stdout.write("[E] out of memory\n")
            return subprocess.CompletedProcess(argv, self.exit_code)
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "rank0.engine").write_bytes(b"engine")
        plugin = {k: getattr(args, k) == "enable" for k in ("use_paged_context_fmha", "remove_input_padding")}
        plugin["multiple_profiles"] = args.multiple_profiles == "enable"
        # builder.py build() @ 008b2b8d: "Paged Context FMHA is disabled because it doesn't work with
        # int8 kv cache currently" (a warning; the engine's plugin_config records False).
        checkpoint = json.loads((Path(args.checkpoint_dir) / "config.json").read_text())
        if (checkpoint.get("quantization") or {}).get("kv_cache_quant_algo") == "INT8":
            plugin["use_paged_context_fmha"] = False
        plugin["gemm_plugin"] = "float16"  # "auto" resolved to the checkpoint dtype
        build_config = {
            "max_batch_size": args.max_batch_size,
            "max_input_len": args.max_input_len,
            "max_seq_len": self.seq_len or args.max_seq_len,
            "max_num_tokens": args.max_num_tokens,
            "plugin_config": plugin,
        }
        config = {"version": "1.2.1", "pretrained_config": {"architecture": "MistralForCausalLM"}}
        (out / "config.json").write_text(json.dumps({**config, "build_config": build_config}))
        if args.visualize_network:
            _write_onnx(Path(args.visualize_network) / "rank0.onnx", valid=self.onnx == "valid")
        return subprocess.CompletedProcess(argv, 0)


def _write_onnx(path: Path, *, valid: bool) -> None:
    import onnx
    from onnx import TensorProto, helper

    path.parent.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Relu", ["x" if valid else "undefined_input"], ["y"])
    model = helper.make_model(helper.make_graph([node], "network", [x], [y]))
    onnx.save(model, path)


TINY_HF_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 512,
    "rope_theta": 1e6,
}


def _stage(name, run):
    return SimpleNamespace(NAME=name, VERSION=1, TOOLS=(), config_section=lambda c, t: {}, run=run)


def _write_hf_config(ctx):
    (ctx.out_dir / "model").mkdir()
    (ctx.out_dir / "model" / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    return StageOutcome(summary="model")


def _write_dummy_checkpoint(ctx):
    (ctx.out_dir / "checkpoint").mkdir()
    (ctx.out_dir / "checkpoint" / "config.json").write_text(
        json.dumps({"architecture": "MistralForCausalLM"})
    )
    (ctx.out_dir / "checkpoint" / "rank0.safetensors").write_bytes(b"weights")
    return StageOutcome(summary="checkpoint")


def _modules(fetch_run, calibrate_run, runner=None):
    real_build = (
        build
        if runner is None
        else SimpleNamespace(
            NAME=build.NAME,
            VERSION=build.VERSION,
            TOOLS=build.TOOLS,
            config_section=build.config_section,
            run=functools.partial(build.run, runner=runner),
        )
    )
    modules = {
        "fetch": _stage("fetch", fetch_run),
        "calibrate": _stage("calibrate", calibrate_run),
        "build": real_build,
    }
    return modules.__getitem__


def _gpu_build(tmp_path, fake, text=TINY_ON_A100, options=RunOptions()):
    config = parse_config(text, "tiny-a100.toml", tmp_path)
    store = ArtifactStore(tmp_path / "work")
    tasks = select_tasks(plan_tasks(config), {"build"})
    report = execute(
        config,
        store,
        tasks,
        reporter=RecordingReporter(),
        options=options,
        modules=_modules(_write_hf_config, _write_dummy_checkpoint, fake),
    )
    return config, store, report


def _builds(report):
    return [r for r in report.results if r.task.stage == "build"]


def test_contract_gpu_build_runs_trtllm_build_and_records_it(tmp_path):
    fake = FakeTensorRTLLM()
    config, store, report = _gpu_build(tmp_path, fake)
    assert report.error is None, report.error
    assert [r.state for r in _builds(report)] == [TaskState.ran, TaskState.ran]
    assert len(fake.builds) == 2
    # One timing cache shared by both profiles of the model, keyed by target and TensorRT version.
    caches = {argv[argv.index("--input_timing_cache") + 1] for argv in fake.builds}
    caches |= {argv[argv.index("--output_timing_cache") + 1] for argv in fake.builds}
    assert caches == {
        str(tmp_path / "work" / "timing-cache" / "tiny-mistral" / "a100-40gb-trt10.14.1.48.cache")
    }
    for result, argv in zip(_builds(report), fake.builds, strict=True):
        record = store.get("build", result.task.variant, result.key).manifest.record
        assert record["command"] == argv
        assert record["engine"] == {
            "runtime": "tensorrt-llm",
            "target": "a100-40gb",
            "gpu_name": "NVIDIA A100-SXM4-40GB",
            "sm": 80,
            "tensorrt_llm_version": "1.2.1",
            "tensorrt_version": "10.14.1.48",
            "cuda_version": "13.0",
            "torch_version": "2.9.0",
        }
        assert record["profile"]["name"] == result.task.profile and record["plan"]["fits"]
        engine = result.path / "engine"
        assert (engine / "rank0.engine").is_file() and json.loads((engine / "build_info.json").read_text())[
            "sm"
        ] == 80
        assert "building..." in (result.path / "trtllm-build.log").read_text()
        assert (
            store.log_path("build", result.task.variant, result.key)
            .with_suffix(".trtllm-build.log")
            .is_file()
        )
        link = tmp_path / "engines" / "tiny-mistral" / "int8_sq" / "a100-40gb" / result.task.profile
        assert link.is_symlink() and not Path(link.readlink()).is_absolute()
        assert link.resolve() == result.path.resolve()


def test_contract_int8_kv_engine_is_planned_and_checked_without_paged_context_fmha(tmp_path):
    def int8_kv_checkpoint(ctx):
        (ctx.out_dir / "checkpoint").mkdir()
        config = {"architecture": "MistralForCausalLM", "quantization": {"kv_cache_quant_algo": "INT8"}}
        (ctx.out_dir / "checkpoint" / "config.json").write_text(json.dumps(config))
        (ctx.out_dir / "checkpoint" / "rank0.safetensors").write_bytes(b"weights")
        return StageOutcome(summary="checkpoint")

    text = TINY_ON_A100.replace(
        'precisions = ["int8_sq"]', 'precisions = ["int8_sq"]\nkv_cache_dtype = "int8"'
    )
    text = text.replace("max_input_len = 96\n", "max_input_len = 96\nmax_num_tokens = 96\n")
    config = parse_config(text, "tiny-a100.toml", tmp_path)
    fake = FakeTensorRTLLM()
    report = execute(
        config,
        ArtifactStore(tmp_path / "work"),
        select_tasks(plan_tasks(config), {"build"}),
        reporter=RecordingReporter(),
        modules=_modules(_write_hf_config, int8_kv_checkpoint, fake),
    )
    assert report.error is None, report.error  # the engine check expects what the builder writes
    for argv in fake.builds:
        args = trtllm_build_parser().parse_args(argv[1:])
        assert args.use_paged_context_fmha == "disable"
        assert args.max_num_tokens >= args.max_input_len  # no chunked context: a whole prompt per step
    for result in _builds(report):
        engine = json.loads((result.path / "engine" / "config.json").read_text())
        assert not supports_chunked_context(engine)  # so Triton's enable_chunked_context is false


def test_unchanged_gpu_build_rerun_does_no_work(tmp_path):
    fake = FakeTensorRTLLM()
    _gpu_build(tmp_path, fake)
    _, _, again = _gpu_build(tmp_path, fake)
    assert [r.state for r in _builds(again)] == [TaskState.up_to_date] * 2
    assert len(fake.builds) == 2 and fake.probes == 2  # nothing ran the second time


def test_failed_trtllm_build_keeps_its_log_and_no_artifact(tmp_path):
    config, store, report = _gpu_build(tmp_path, FakeTensorRTLLM(exit_code=1))
    assert isinstance(report.error, ToolFailedError) and report.error.exit_code == ExitCode.STAGE_FAILED
    assert "out of memory" in report.error.log.read_text()
    assert ".trtllm-build.log" in report.error.message
    failed = _builds(report)[0]
    assert failed.state is TaskState.failed and store.get("build", failed.task.variant, failed.key) is None
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").rglob("latency"))


def test_engine_that_ignored_a_limit_is_refused(tmp_path):
    _, _, report = _gpu_build(tmp_path, FakeTensorRTLLM(seq_len=32768))
    assert isinstance(report.error, StageError)
    assert "max_seq_len 32768 != 256" in report.error.message


def test_wrong_gpu_architecture_is_refused_unless_allowed(tmp_path):
    _, _, report = _gpu_build(tmp_path / "a", FakeTensorRTLLM(gpu=A10G))
    assert isinstance(report.error, MissingDependencyError) and report.error.exit_code == 3
    assert "sm86 but target a100-40gb is sm80" in report.error.message
    fake = FakeTensorRTLLM(gpu=A10G)
    _, store, report = _gpu_build(tmp_path / "b", fake, options=RunOptions(allow_arch_mismatch=True))
    assert report.error is None
    result = _builds(report)[0]
    assert store.get("build", result.task.variant, result.key).manifest.record["engine"]["sm"] == 86


def test_contract_visualize_writes_a_checked_onnx_network(tmp_path):
    text = TINY_ON_A100 + "\n[build]\nvisualize = true\n"
    fake = FakeTensorRTLLM()
    _, store, report = _gpu_build(tmp_path / "a", fake, text)
    assert report.error is None
    result = _builds(report)[0]
    assert fake.builds[0][-2:] == [
        "--visualize_network",
        str(Path(fake.builds[0][fake.builds[0].index("--output_dir") + 1]).parent / "network"),
    ]
    assert store.get("build", result.task.variant, result.key).manifest.record["onnx_files"] == [
        "network/rank0.onnx"
    ]
    _, _, bad = _gpu_build(tmp_path / "b", FakeTensorRTLLM(onnx="invalid"), text)
    assert isinstance(bad.error, StageError) and "rank0.onnx is not a valid ONNX model" in bad.error.message


def test_onnx_check_refuses_an_empty_or_broken_export(tmp_path):
    with pytest.raises(StageError, match="wrote no .onnx file"):
        check_onnx_files(tmp_path)
    _write_onnx(tmp_path / "good.onnx", valid=True)
    assert check_onnx_files(tmp_path) == [tmp_path / "good.onnx"]
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(StageError, match="junk.onnx is not a valid ONNX model"):
        check_onnx_files(tmp_path)


# --- cpu-reference: the tiny model end to end ------------------------------------------------------


@pytest.fixture(scope="module")
def int8_wo_checkpoint(tmp_path_factory, tiny_model_dir) -> Path:
    return tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo")


def _reference_build(tmp_path, tiny_model_dir, checkpoint):
    def fetch(ctx):
        shutil.copytree(tiny_model_dir, ctx.out_dir / "model")
        return StageOutcome(summary="tiny model")

    def calibrate(ctx):
        shutil.copytree(checkpoint, ctx.out_dir / "checkpoint")
        return StageOutcome(summary="int8_wo checkpoint")

    config = load_config(None)
    config = config.model_copy(
        update={"quantization": config.quantization.model_copy(update={"precisions": (Precision.int8_wo,)})}
    )
    store = ArtifactStore(tmp_path / "work")
    tasks = select_tasks(plan_tasks(config), {"build"})
    report = execute(config, store, tasks, reporter=RecordingReporter(), modules=_modules(fetch, calibrate))
    return config, store, report


def test_cpu_reference_build_end_to_end(tmp_path, tiny_model_dir, int8_wo_checkpoint):
    config, store, report = _reference_build(tmp_path, tiny_model_dir, int8_wo_checkpoint)
    assert report.error is None, report.error
    latency, throughput = _builds(report)
    engine = latency.path / "engine"
    engine_config = json.loads((engine / "config.json").read_text())
    assert set(engine_config) == {"version", "pretrained_config", "build_config"}
    checkpoint_config = json.loads((int8_wo_checkpoint / "config.json").read_text())
    assert engine_config["pretrained_config"] == checkpoint_config
    assert engine_config["build_config"]["max_batch_size"] == 1
    assert engine_config["build_config"]["max_seq_len"] == 256
    assert engine_config["build_config"]["plugin_config"]["use_paged_context_fmha"] is True
    manifest = store.get("build", latency.task.variant, latency.key).manifest
    weights = next(f for f in manifest.files if f.path == "engine/rank0.safetensors")
    assert weights.size == (int8_wo_checkpoint / "rank0.safetensors").stat().st_size
    assert manifest.record["engine"]["runtime"] == "cpu-reference" and manifest.record["command"] == []
    link = tmp_path / "engines" / "tiny-mistral" / "int8_wo" / "cpu-reference" / "latency"
    assert link.resolve() == latency.path.resolve()

    runner = load_runner(engine)
    assert isinstance(runner, ReferenceRunner) and runner.engine_config == engine_config
    vocab = checkpoint_config["vocab_size"]
    assert runner.logits(torch.arange(12)[None, :] % vocab).shape == (1, 12, vocab)
    with pytest.raises(InputError, match="max_batch_size=1"):
        runner.generate([[1, 2], [3, 4]], max_new_tokens=2)
    with pytest.raises(InputError, match="max_input_len=192"):
        runner.logits(torch.ones(1, 193, dtype=torch.long))
    wide = load_runner(throughput.path / "engine")
    outputs = wide.generate([[5, 6, 7], [8, 9]], max_new_tokens=3)
    assert [len(o) for o in outputs] == [3, 3]
    with pytest.raises(InputError, match="max_seq_len=128"):
        wide.generate([[1] * 96], max_new_tokens=40)

    broken = tmp_path / "broken-engine"
    shutil.copytree(engine, broken)
    engine_config["pretrained_config"]["num_attention_heads"] = "many"
    (broken / "config.json").write_text(json.dumps(engine_config))
    with pytest.raises(
        InputError, match=r"config.json: pretrained_config.num_attention_heads: Input should be"
    ):
        load_runner(broken)

    _, _, again = _reference_build(tmp_path, tiny_model_dir, int8_wo_checkpoint)
    assert [r.state for r in _builds(again)] == [TaskState.up_to_date] * 2


# --- runners ----------------------------------------------------------------------------------------


def test_runner_refuses_another_tensorrt_or_gpu():
    info = EngineInfo(
        runtime="tensorrt-llm", target="a100-40gb", gpu_name="A100", sm=80, tensorrt_version="10.14.1.48"
    )
    assert runtime_mismatches(info, "10.14.1.48", [80]) == []
    assert (
        "built with TensorRT 10.14.1.48, this host has TensorRT 10.13.0"
        in runtime_mismatches(info, "10.13.0", [80])[0]
    )
    assert "built on sm80 (A100), this GPU is sm86" in runtime_mismatches(info, "10.14.1.48", [86])[0]
    assert runtime_mismatches(info, "10.14.1.48", []) == ["no CUDA GPU is visible"]


def test_load_runner_needs_an_engine_dir(tmp_path):
    with pytest.raises(InputError, match="no engine config.json"):
        load_runner(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"version": "1", "pretrained_config": {}, "build_config": {}})
    )
    with pytest.raises(InputError, match="build_info.json is missing"):
        load_runner(tmp_path)
    (tmp_path / "build_info.json").write_text(
        EngineInfo(runtime="cpu-reference", target="cpu-reference").model_dump_json()
    )
    with pytest.raises(InputError, match="build_config lacks a valid 'max_batch_size'"):
        load_runner(tmp_path)
    limits = {"max_batch_size": 1, "max_input_len": 8, "max_seq_len": 16}
    (tmp_path / "config.json").write_text(
        json.dumps({"version": "1", "pretrained_config": {}, "build_config": limits})
    )
    (tmp_path / "build_info.json").write_text(
        EngineInfo(runtime="tensorrt-llm", target="a100-40gb").model_dump_json()
    )
    with pytest.raises(MissingDependencyError, match="needs TensorRT-LLM 1.2.1"):
        load_runner(tmp_path)
