"""The build stage: trtllm-build argv (contract), preflight, GPU builds against a stand-in trtllm-build
process, the reference backend's build end to end, engines/ links and the runners.

Contract tests replace only the TensorRT-LLM process (the probe's child Python and trtllm-build).
They were checked against TensorRT-LLM 1.2.x sources: tensorrt_llm/commands/build.py
(parse_arguments, main), tensorrt_llm/plugin/plugin.py (PluginConfig, cli_plugin_args,
add_plugin_argument), cpp/include/tensorrt_llm/runtime/modelConfig.h (KVCacheTypeFromString).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fake_stages import StandIn
from mpi_singleton import inherits_mpi_job, singleton_mpi_parent, write_mpi_child_packages
from tiny_checkpoints import tiny_checkpoint

from pipeline.backends import load_runner
from pipeline.backends.base import EngineInfo, read_engine_info
from pipeline.backends.reference import ReferenceRunner
from pipeline.backends.trtllm_engine.argv import trtllm_build_argv
from pipeline.backends.trtllm_engine.engine import supports_chunked_context
from pipeline.backends.trtllm_engine.environment import (
    BuildEnvironment,
    GpuInfo,
    driver_version,
    preflight_problems,
    probe_environment,
)
from pipeline.backends.trtllm_engine.network import network_files
from pipeline.backends.trtllm_engine.runner import runtime_mismatches
from pipeline.cli import main
from pipeline.core.errors import ExitCode, InputError, MissingDependencyError, StageError, ToolFailedError
from pipeline.core.hashing import sha256_file
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import execute
from pipeline.execution.inprocess import InProcessTaskRunner
from pipeline.execution.results import TaskState
from pipeline.facts.architecture import KNOWN_ARCHITECTURES
from pipeline.facts.config import BackendSection, BuildSection, Precision, load_config, parse_config
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.facts.targets import TARGETS
from pipeline.planning.memory import plan_memory, plan_profile
from pipeline.planning.tasks import Task, plan_tasks, select_tasks
from pipeline.stages import build
from pipeline.stages.base import RunOptions, Stage, StageContext, StageOutcome
from pipeline.stages.build import Build
from pipeline.stages.gate_engine import GateEngine

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
    "--workers", "1",
    "--input_timing_cache", "/w/shared.cache",
    "--output_timing_cache", "/out/timing.cache",
    "--log_level", "info",
]  # fmt: skip


def _real_job_argv_with(build: BuildSection) -> list[str]:
    profile = load_config(None).profiles[0]
    plan = plan_memory(MISTRAL, Precision.int8_sq, "fp16", TARGETS["h100-80gb"], profile)
    return trtllm_build_argv(Path("/c"), Path("/o"), profile, build, plan, Path("/t"), Path("/u"))


def _real_job_argv(repo_root: Path, profile_name: str, **extra) -> list[str]:
    config = load_config(repo_root / "pipeline.toml")
    profile = config.profile(profile_name)
    plan = plan_memory(MISTRAL, Precision.int8_sq, "fp16", TARGETS["a100-40gb"], profile)
    return trtllm_build_argv(
        Path("/ckpt"),
        Path("/out/engine"),
        profile,
        config.build,
        plan,
        Path("/w/shared.cache"),
        Path("/out/timing.cache"),
        **extra,
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
    # A served engine never gathers context logits: each response would carry the prompt's full logits.
    assert args.kv_cache_type == "PAGED" and not args.gather_context_logits and args.opt_num_tokens is None


def test_contract_only_the_gate_engine_gathers_context_logits(repo_root):
    config = load_config(repo_root / "pipeline.toml")
    plan = plan_profile(config, MISTRAL, "trtllm-engine", Precision.int8_sq, "gate")
    argv = trtllm_build_argv(
        Path("/c"), Path("/o"), config.gate_profile, config.build, plan, Path("/t"), Path("/u")
    )
    args = trtllm_build_parser().parse_args(argv[1:])
    assert args.gather_context_logits
    assert (args.max_batch_size, args.max_input_len, args.max_seq_len) == (8, 1024, 1088)


def test_contract_the_configs_gemm_plugin_choices_are_trtllm_builds():
    from pipeline.facts.build_options import GEMM_PLUGINS

    gemm = next(a for a in trtllm_build_parser()._actions if a.dest == "gemm_plugin")
    assert list(GEMM_PLUGINS) == gemm.choices  # plugin.py's Literal, None offered as "disable"
    for value in GEMM_PLUGINS:
        argv = _real_job_argv_with(BuildSection(gemm_plugin=value))
        assert trtllm_build_parser().parse_args(argv[1:]).gemm_plugin == value


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
    argv = trtllm_build_argv(Path("/c"), Path("/o"), profile, single, plan, Path("/t"), Path("/u"))
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


# torch's error when the driver is older than its CUDA (torch/csrc/cuda/Module.cpp via c10's
# CUDA check: "The NVIDIA driver on your system is too old (found version N)"), with the CUDA
# version the driver supports as cuDriverGetVersion reports it (12020: CUDA 12.2, an R535 driver).
OLD_DRIVER_ERROR = (
    "The NVIDIA driver on your system is too old (found version 12020). Please update your GPU driver "
    "by downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx"
)


@pytest.mark.parametrize(
    ("nvrm_line", "version"),
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023",
            "535.104.05",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  590.44.01  Release Build  (dvs-builder@U22)",
            "590.44.01",
        ),
        (None, None),
    ],
)
def test_driver_version_from_the_kernel_modules_version_line(nvrm_line, version):
    assert driver_version(nvrm_line) == version


def test_preflight_says_which_driver_the_image_needs_when_cuda_cannot_start():
    """Issue 21 item 7: an old driver used to show only as "no CUDA GPU is visible"."""
    old = _problems(
        GOOD_ENV.model_copy(update={"gpus": (), "driver": "535.104.05", "cuda_error": OLD_DRIVER_ERROR})
    )
    assert old[0] == (
        "no CUDA GPU is visible: the host's NVIDIA driver is 535.104.05 (CUDA: The NVIDIA driver on your "
        f"system is too old (found version 12020)); {SERVING_CONTAINER.tag} is CUDA 13.1.0.036 and needs "
        "NVIDIA driver 590.44.01 or newer (on a data-center GPU an older driver branch that CUDA forward "
        "compatibility supports also works: docs.nvidia.com/deploy/cuda-compatibility)"
    )
    none = _problems(GOOD_ENV.model_copy(update={"gpus": (), "driver": None}))
    assert "no NVIDIA driver is loaded" in none[0] and "590.44.01" in none[0]
    current = _problems(GOOD_ENV.model_copy(update={"gpus": (), "driver": "590.48.01"}))
    assert (
        current[0] == "no CUDA GPU is visible (NVIDIA driver 590.48.01): start the container with --gpus all"
    )


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


def test_probe_after_tensorrt_llm_initialised_mpi_in_this_process(tmp_path, monkeypatch):
    """Calibration and the gate import tensorrt_llm in the pipeline's own process; the next build's
    probe child must still import it (see tests/mpi_singleton.py for what Open MPI leaves behind)."""
    monkeypatch.setenv("PYTHONPATH", str(write_mpi_child_packages(tmp_path / "site")))
    with singleton_mpi_parent():
        env = probe_environment(tmp_path / "probe.log")
    assert (env.tensorrt_llm, env.tensorrt) == ("1.2.1", "10.14.1.48")
    assert "orte_init failed" not in (tmp_path / "probe.log").read_text()
    if not Path("/proc/driver/nvidia/version").exists():
        # Issue 21 item 7: the probe keeps why CUDA would not start (this torch is a CPU build).
        assert env.driver is None and "not compiled with CUDA" in env.cuda_error


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
    assert SERVING_CONTAINER.tag in error
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
    assert "largest batch at max_seq_len 32768: 7" in err
    assert not (tmp_path / "work" / "store").exists()


def test_reference_build_refuses_a_profile_that_does_not_fit(repo_root, tmp_path, capsys):
    text = (repo_root / "pipeline" / "defaults" / "tiny.toml").read_text()
    config = tmp_path / "tiny.toml"
    config.write_text(text.replace("max_batch_size = 8\n", "max_batch_size = 400000\n"))
    (tmp_path / "calib_data").symlink_to(repo_root / "calib_data")  # the config's data files exist
    assert main(["build", "--config", str(config), "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "profiles[1]" in err and "'throughput' does not fit cpu" in err
    assert not (tmp_path / "work" / "store").exists()


# --- GPU builds against a stand-in trtllm-build --------------------------------------------------


class FakeTensorRTLLM:
    """The TensorRT-LLM process: the probe's child Python and trtllm-build, parsed with 1.2.1's flags.

    Timing caches as TensorRT-LLM 1.2.x handles them (NVIDIA/TensorRT-LLM@008b2b8d23af95e4e19fa6f354f9c5f6349b2bfc):
    commands/build.py passes --input_timing_cache and --output_timing_cache to two BuildConfig fields
    (they may differ; "This option is ignored if the file does not exist"); builder.py
    Builder.create_builder_config reads the input file whole if it exists, else warns "Invalid timing
    cache, using freshly created one" and starts empty; build() then, after the engine is built and
    before it is saved (build_and_save -> Engine.save), has rank 0 write the builder's cache (the
    input's entries plus the new ones) with a plain open(path, "wb") (save_timing_cache: in place,
    not atomic; a missing folder fails the build) and asserts it did.
    """

    def __init__(self, *, gpu: GpuInfo = A100, exit_code: int = 0, graph: bool = True, seq_len=None):
        self.gpu = gpu
        self.exit_code = exit_code
        self.graph = graph  # whether --visualize_network writes its graph
        self.seq_len = seq_len  # what the engine config claims (None: what was asked)
        self.probes = 0
        self.builds: list[list[str]] = []
        self.caches_read: list[bytes | None] = []  # per build: the input timing cache's bytes (None: absent)

    def __call__(self, argv, *, stdout, stderr, env, cwd, check):
        if argv[1] == "-c":
            self.probes += 1
            if inherits_mpi_job(env):  # its `import tensorrt_llm` aborts in orte_init (mpi_singleton)
                stdout.write("getting local rank failed --> Returned value No permission (-17)\n")
                return subprocess.CompletedProcess(argv, 1)
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
        cache_in = Path(args.input_timing_cache) if args.input_timing_cache else None
        tactics = cache_in.read_bytes() if cache_in is not None and cache_in.exists() else None
        self.caches_read.append(tactics)
        if tactics is None:
            stdout.write("[W] Invalid timing cache, using freshly created one\n")
        tactics = (tactics or b"") + f"tactics {args.max_batch_size}x{args.max_input_len}\n".encode()
        with open(args.output_timing_cache, "wb") as f:
            f.write(tactics)
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
            # BuildConfig's fields (tensorrt_llm/builder.py@008b2b8d), as the engine's config.json carries them
            "gather_context_logits": args.gather_context_logits,
            "max_batch_size": args.max_batch_size,
            "max_input_len": args.max_input_len,
            "max_seq_len": self.seq_len or args.max_seq_len,
            "max_num_tokens": args.max_num_tokens,
            "plugin_config": plugin,
        }
        config = {"version": "1.2.1", "pretrained_config": {"architecture": "MistralForCausalLM"}}
        (out / "config.json").write_text(json.dumps({**config, "build_config": build_config}))
        if args.visualize_network and self.graph:
            _write_network_graph(Path(args.visualize_network) / "rank0.onnx")
        return subprocess.CompletedProcess(argv, 0)


def _write_network_graph(path: Path) -> None:
    """What --visualize_network writes, as TensorRT-LLM does it: tensorrt_llm/tools/onnx_utils.py to_onnx
    (NVIDIA/TensorRT-LLM@20709ce96a6b1df903ed5d28d041661167b86baa), called by builder.py's build() through
    Network.to_onnx: one node per TensorRT layer, op type str(layer.type), domain "com.nvidia", and no
    opset import for that domain."""
    import onnx
    from onnx import TensorProto, helper

    path.parent.mkdir(parents=True, exist_ok=True)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT32, [-1])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT16, [-1, 512])
    nodes = [
        helper.make_node(
            "LayerType.GATHER", ["input_ids"], ["hidden"], name="embedding", domain="com.nvidia"
        ),
        helper.make_node(
            "LayerType.MATRIX_MULTIPLY", ["hidden"], ["logits"], name="lm_head", domain="com.nvidia"
        ),
    ]
    graph = helper.make_graph(nodes, "debug_graph", [ids], [logits], initializer=None)
    onnx.save(helper.make_model(graph, producer_name="NVIDIA"), path)


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


def _run_builds(
    config, store, tasks, fetch_run, calibrate_run, runner=None, wrap=lambda stage: stage, **kwargs
):
    """execute() with stand-in fetch and calibrate, the real build and gate_engine (wrapped), whose
    external tools run on `runner`."""
    stages = {
        "fetch": StandIn("fetch", fetch_run),
        "calibrate": StandIn("calibrate", calibrate_run),
        "build": wrap(Build()),
        "gate_engine": wrap(GateEngine()),
    }
    tools = {} if runner is None else {"tools": runner}
    return execute(
        config,
        store,
        tasks,
        reporter=RecordingReporter(),
        runner=InProcessTaskRunner(stages, **tools),
        **kwargs,
    )


def _gpu_build(
    tmp_path, fake, text=TINY_ON_A100, options=RunOptions(), stages=("build",), wrap=lambda stage: stage
):
    config = parse_config(text, "tiny-a100.toml", tmp_path)
    store = ArtifactStore(tmp_path / "work")
    tasks = select_tasks(plan_tasks(config), set(stages))
    report = _run_builds(
        config, store, tasks, _write_hf_config, _write_dummy_checkpoint, fake, wrap=wrap, options=options
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
    # Both profiles read one timing cache of the model, keyed by target and TensorRT version; each
    # writes its own into its artifact, which the driver then shares: the second build read the first's.
    shared = tmp_path / "work" / "timing-cache" / "tiny-mistral" / "a100-40gb-trt10.14.1.48.cache"
    assert {argv[argv.index("--input_timing_cache") + 1] for argv in fake.builds} == {str(shared)}
    assert fake.caches_read == [None, b"tactics 1x192\n"]
    assert shared.read_bytes() == b"tactics 1x192\ntactics 8x96\n"
    for result, argv in zip(_builds(report), fake.builds, strict=True):
        manifest = store.get("build", result.task.variant, result.key).manifest
        record = manifest.record
        assert record["command"] == argv
        own = Path(argv[argv.index("--output_timing_cache") + 1])
        assert own.parent.name.startswith(f".tmp-{result.key}-") and own.name == "timing.cache"
        assert record["timing_cache"] == "timing.cache" and "timing.cache" in {f.path for f in manifest.files}
        assert record["engine"] == {
            "backend": "trtllm-engine",
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
        link = (
            tmp_path
            / "engines"
            / "tiny-mistral"
            / "trtllm-engine"
            / "int8_sq"
            / "a100-40gb"
            / result.task.profile
        )
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
    report = _run_builds(
        config,
        ArtifactStore(tmp_path / "work"),
        select_tasks(plan_tasks(config), {"build"}),
        _write_hf_config,
        int8_kv_checkpoint,
        fake,
    )
    assert report.error is None, report.error  # the engine check expects what the builder writes
    for argv in fake.builds:
        args = trtllm_build_parser().parse_args(argv[1:])
        assert args.use_paged_context_fmha == "disable"
        assert args.max_num_tokens >= args.max_input_len  # no chunked context: a whole prompt per step
    for result in _builds(report):
        engine = json.loads((result.path / "engine" / "config.json").read_text())
        assert not supports_chunked_context(engine)  # so Triton's enable_chunked_context is false


def test_contract_gate_engine_is_built_with_context_logits_and_never_linked(tmp_path):
    fake = FakeTensorRTLLM()
    config, store, report = _gpu_build(tmp_path, fake, stages=("build", "gate_engine"))
    assert report.error is None, report.error
    shapes = sorted(
        (
            int(argv[argv.index("--max_batch_size") + 1]),
            int(argv[argv.index("--max_input_len") + 1]),
            "--gather_context_logits" in argv,
        )
        for argv in fake.builds
    )
    # latency, throughput, and the gate engine: gate.batch_size windows of gate.eval_seq_len tokens
    assert shapes == [
        (1, 192, False),
        (8, 96, False),
        (config.gate.batch_size, config.gate.eval_seq_len, True),
    ]
    (result,) = [r for r in report.results if r.task.stage == "gate_engine"]
    assert result.state is TaskState.ran and result.task.profile == "gate"
    record = store.get("gate_engine", result.task.variant, result.key).manifest.record
    assert record["plan"]["gather_context_logits"] and "--gather_context_logits" in record["command"]
    served = [r for r in report.results if r.task.stage == "build"]
    for r in served:
        assert (
            "--gather_context_logits"
            not in store.get("build", r.task.variant, r.key).manifest.record["command"]
        )
    assert not (
        tmp_path / "engines" / "tiny-mistral" / "trtllm-engine" / "int8_sq" / "a100-40gb" / "gate"
    ).exists()


def test_unchanged_gpu_build_rerun_does_no_work(tmp_path):
    fake = FakeTensorRTLLM()
    _gpu_build(tmp_path, fake)
    _, _, again = _gpu_build(tmp_path, fake)
    assert [r.state for r in _builds(again)] == [TaskState.up_to_date] * 2
    assert len(fake.builds) == 2 and fake.probes == 2  # nothing ran the second time


def _tree(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """Every entry under root (none under skip) with what changes when it is written: a link's target,
    a file's size and mtime; a folder is only there."""
    entries = {}
    for path in root.rglob("*"):
        if any(path == s or path.is_relative_to(s) for s in skip):
            continue
        if path.is_symlink():
            entries[str(path.relative_to(root))] = ("link", os.readlink(path))
        elif path.is_file():
            st = path.stat()
            entries[str(path.relative_to(root))] = ("file", st.st_size, st.st_mtime_ns)
        else:
            entries[str(path.relative_to(root))] = ("dir",)
    return entries


def _written(before: dict[str, tuple], after: dict[str, tuple], *, folders: bool = True) -> set[str]:
    """What appeared, changed or went (new folders only if `folders`)."""
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    return {p for p in changed if folders or after.get(p) != ("dir",)}


class Watched(Stage):
    """A stage whose run and after_commit are watched: what each wrote under root, besides the
    task's own out_dir and the work dir's logs/ (run) or besides logs/ (after_commit)."""

    def __init__(self, stage: Stage, root: Path) -> None:
        self.stage, self.root = stage, root
        self.name, self.version, self.tools = stage.name, stage.version, stage.tools
        self.by_run: list[set[str]] = []
        self.by_after_commit: dict[str, set[str]] = {}

    def config_section(self, config, task):
        return self.stage.config_section(config, task)

    def run(self, ctx: StageContext) -> StageOutcome:
        skip = (ctx.out_dir, ctx.work_dir / "logs")
        before = _tree(self.root, skip=skip)
        outcome = self.stage.run(ctx)
        self.by_run.append(_written(before, _tree(self.root, skip=skip)))
        return outcome

    def after_commit(self, config, store, task, artifact, reporter) -> None:
        before = _tree(self.root, skip=(store.work_dir / "logs",))
        self.stage.after_commit(config, store, task, artifact, reporter)
        after = _tree(self.root, skip=(store.work_dir / "logs",))
        self.by_after_commit[task.id] = _written(before, after, folders=False)  # the leaves' folders too


def test_a_gpu_build_writes_only_its_artifact_and_shares_through_after_commit(tmp_path):
    watched: dict[str, Watched] = {}

    def watch(stage):
        watched[stage.name] = Watched(stage, tmp_path)
        return watched[stage.name]

    _, _, report = _gpu_build(tmp_path, FakeTensorRTLLM(), stages=("build", "gate_engine"), wrap=watch)
    assert report.error is None, report.error
    assert watched["build"].by_run == [set(), set()] and watched["gate_engine"].by_run == [set()]
    cache = "work/timing-cache/tiny-mistral/a100-40gb-trt10.14.1.48.cache"
    link = "engines/tiny-mistral/trtllm-engine/int8_sq/a100-40gb/{}"
    assert watched["gate_engine"].by_after_commit == {
        "gate_engine[trtllm-engine/int8_sq/gate]": {cache}
    }  # no link
    assert watched["build"].by_after_commit == {
        "build[trtllm-engine/int8_sq/latency]": {cache, link.format("latency")},
        "build[trtllm-engine/int8_sq/throughput]": {cache, link.format("throughput")},
    }


def test_a_reference_build_writes_only_its_artifact_and_links_through_after_commit(
    tmp_path, tiny_model_dir, int8_wo_checkpoint
):
    watched = []
    _, _, report = _reference_build(
        tmp_path,
        tiny_model_dir,
        int8_wo_checkpoint,
        wrap=lambda stage: watched.append(Watched(stage, tmp_path)) or watched[-1],
    )
    assert report.error is None, report.error
    build_watch = next(w for w in watched if w.name == "build")
    assert build_watch.by_run == [set(), set()]
    assert build_watch.by_after_commit == {
        f"build[trtllm-engine/int8_wo/{p}]": {f"engines/tiny-mistral/trtllm-engine/int8_wo/cpu/{p}"}
        for p in ("latency", "throughput")
    }


def test_up_to_date_builds_restore_their_links_and_the_shared_cache_never_an_older_cache(tmp_path):
    fake = FakeTensorRTLLM()
    _, _, first = _gpu_build(tmp_path, fake)
    links = [
        tmp_path / "engines" / "tiny-mistral" / "trtllm-engine" / "int8_sq" / "a100-40gb" / p
        for p in ("latency", "throughput")
    ]
    shared = tmp_path / "work" / "timing-cache" / "tiny-mistral" / "a100-40gb-trt10.14.1.48.cache"
    newest = shared.read_bytes()
    links[0].unlink()
    shared.unlink()

    _, _, again = _gpu_build(tmp_path, fake)
    assert [r.state for r in _builds(again)] == [TaskState.up_to_date] * 2 and len(fake.builds) == 2
    assert [link.resolve() for link in links] == [r.path.resolve() for r in _builds(first)]
    assert shared.read_bytes() == newest  # each build's cache was offered; the newer one stays

    shared.write_bytes(b"a later build's cache\n")  # e.g. another profile, built since
    _, _, third = _gpu_build(tmp_path, fake)
    assert [r.state for r in _builds(third)] == [TaskState.up_to_date] * 2
    assert shared.read_bytes() == b"a later build's cache\n"


def test_a_file_where_the_engines_link_goes_fails_the_task_after_its_commit(tmp_path):
    blocker = tmp_path / "engines" / "tiny-mistral" / "trtllm-engine" / "int8_sq" / "a100-40gb" / "latency"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a link")
    _, store, report = _gpu_build(tmp_path, FakeTensorRTLLM())
    assert isinstance(report.error, StageError)
    assert report.error.message.endswith(f"{blocker} exists and is not a link; move it away")
    (failed,) = _builds(report)
    assert failed.state is TaskState.failed and failed.summary == report.error.message
    # The engine itself is whole and committed: once the file is moved, the next run only links it.
    assert store.get("build", failed.task.variant, failed.key) is not None
    blocker.unlink()
    _, _, again = _gpu_build(tmp_path, FakeTensorRTLLM())
    assert [r.state for r in _builds(again)] == [TaskState.up_to_date, TaskState.ran]
    assert blocker.resolve() == _builds(again)[0].path.resolve()


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


def test_contract_visualize_records_the_network_graph_without_checking_it_as_onnx(tmp_path):
    import onnx

    text = TINY_ON_A100 + "\n[build]\nvisualize = true\n"
    fake = FakeTensorRTLLM()
    _, store, report = _gpu_build(tmp_path / "a", fake, text)
    assert report.error is None, report.error
    result = _builds(report)[0]
    assert fake.builds[0][-2:] == [
        "--visualize_network",
        str(Path(fake.builds[0][fake.builds[0].index("--output_dir") + 1]).parent / "network"),
    ]
    manifest = store.get("build", result.task.variant, result.key).manifest
    assert manifest.record["network_files"] == ["network/rank0.onnx"]
    assert "network/rank0.onnx" in {f.path for f in manifest.files}  # hashed like every output
    # The graph is for viewing: onnx.checker rejects what TensorRT-LLM writes, so checking it failed every build.
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(str(result.path / "network" / "rank0.onnx"))
    _, _, bad = _gpu_build(tmp_path / "b", FakeTensorRTLLM(graph=False), text)
    assert isinstance(bad.error, StageError) and "--visualize_network wrote nothing" in bad.error.message


def test_network_files_lists_what_was_written_and_refuses_nothing(tmp_path):
    with pytest.raises(StageError, match="wrote nothing"):
        network_files(tmp_path / "network")
    _write_network_graph(tmp_path / "network" / "rank0.onnx")
    assert network_files(tmp_path / "network") == [tmp_path / "network" / "rank0.onnx"]


# --- the reference backend: the tiny model end to end ------------------------------------------------------


@pytest.fixture(scope="module")
def int8_wo_checkpoint(tmp_path_factory, tiny_model_dir) -> Path:
    return tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo")


def _reference_build(tmp_path, tiny_model_dir, checkpoint, force=frozenset(), wrap=lambda stage: stage):
    def fetch(ctx):
        shutil.copytree(tiny_model_dir, ctx.out_dir / "model")
        return StageOutcome(summary="tiny model")

    def calibrate(ctx):
        shutil.copytree(checkpoint, ctx.out_dir / "checkpoint")
        return StageOutcome(summary="int8_wo checkpoint")

    config = load_config(None)
    config = config.model_copy(
        update={"backends": (BackendSection(name="trtllm-engine", precisions=(Precision.int8_wo,)),)}
    )
    store = ArtifactStore(tmp_path / "work")
    tasks = select_tasks(plan_tasks(config), {"build"})
    report = _run_builds(config, store, tasks, fetch, calibrate, wrap=wrap, force_stages=force)
    return config, store, report


def test_reference_build_end_to_end(tmp_path, tiny_model_dir, int8_wo_checkpoint):
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
    assert manifest.record["engine"]["backend"] == "reference" and manifest.record["command"] == []
    link = tmp_path / "engines" / "tiny-mistral" / "trtllm-engine" / "int8_wo" / "cpu" / "latency"
    assert link.resolve() == latency.path.resolve()

    runner = load_runner(engine)
    assert isinstance(runner, ReferenceRunner) and runner.engine_config == engine_config
    vocab = checkpoint_config["vocab_size"]
    assert [t.shape for t in runner.context_logits([[1] * 12])] == [(12, vocab)]
    with pytest.raises(InputError, match="max_batch_size=1"):
        runner.generate([[1, 2], [3, 4]], max_new_tokens=2)
    with pytest.raises(InputError, match="max_input_len=192"):
        runner.context_logits([[1] * 193])
    wide = load_runner(throughput.path / "engine")
    assert [t.shape for t in wide.context_logits([[1] * 12, [2] * 5])] == [(12, vocab), (5, vocab)]
    assert load_runner(throughput.path / "engine", max_batch_size=2).limits.max_batch_size == 2  # the gate's
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


def test_the_build_manifest_hashes_the_bytes_it_wrote(tmp_path, tiny_model_dir, int8_wo_checkpoint):
    """A checkpoint replaced after calibrate is found and recalibrated; the engine's manifest names the
    sha256 of the file the engine holds, never one copied from the checkpoint's manifest."""
    _, _, first = _reference_build(tmp_path, tiny_model_dir, int8_wo_checkpoint)
    calibrated = next(r for r in first.results if r.task.stage == "calibrate")
    weights = calibrated.path / "checkpoint" / "rank0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.unlink()
    weights.write_bytes(bytes(data))

    _, store, report = _reference_build(tmp_path, tiny_model_dir, int8_wo_checkpoint, force={"build"})
    assert report.error is None, report.error
    assert next(r for r in report.results if r.task.stage == "calibrate").reason == (
        "modified: checkpoint/rank0.safetensors"
    )
    for result in _builds(report):
        manifest = store.get("build", result.task.variant, result.key).manifest
        for entry in manifest.files:
            assert sha256_file(result.path / entry.path) == entry.sha256, entry.path


def _link(work: Path, key: str, reporter: RecordingReporter) -> Path | None:
    """build's engines/ link for the artifact <key> of build[trtllm-engine/int8_sq/latency] in work's store."""
    store, task = ArtifactStore(work), Task("build", "trtllm-engine", "int8_sq", "latency")
    final = store.slot("build", task.variant) / key
    return build._link_engine(load_config(None), store, task, final, reporter)


def test_an_engines_link_belongs_to_one_work_dir(tmp_path):
    mine = tmp_path / "work-a" / "store" / "build" / "trtllm-engine" / "int8_sq" / "latency"
    link = _link(tmp_path / "work-a", "a" * 20, RecordingReporter())
    assert link == tmp_path / "engines" / "tiny-mistral" / "trtllm-engine" / "int8_sq" / "cpu" / "latency"
    assert link.resolve() == mine / ("a" * 20)

    other = RecordingReporter()
    assert _link(tmp_path / "work-b", "b" * 20, other) is None  # refused: never silently repointed
    assert link.resolve() == mine / ("a" * 20)
    assert f"{link} points into {mine}" in other.text()

    assert _link(tmp_path / "work-a", "c" * 20, RecordingReporter()) == link  # its own work dir moves it on
    assert link.resolve() == mine / ("c" * 20)


# --- runners ----------------------------------------------------------------------------------------


def test_runner_refuses_another_tensorrt_or_gpu():
    info = EngineInfo(
        backend="trtllm-engine", target="a100-40gb", gpu_name="A100", sm=80, tensorrt_version="10.14.1.48"
    )
    assert runtime_mismatches(info, "10.14.1.48", [80]) == []
    assert (
        "built with TensorRT 10.14.1.48, this host has TensorRT 10.13.0"
        in runtime_mismatches(info, "10.13.0", [80])[0]
    )
    assert "built on sm80 (A100), this GPU is sm86" in runtime_mismatches(info, "10.14.1.48", [86])[0]
    assert runtime_mismatches(info, "10.14.1.48", []) == ["no CUDA GPU is visible"]


def test_load_runner_needs_an_engine_dir(tmp_path):
    # build_info.json first: it names the backend that reads the rest.
    with pytest.raises(InputError, match="build_info.json is missing"):
        load_runner(tmp_path)
    (tmp_path / "build_info.json").write_text(EngineInfo(backend="reference", target="cpu").model_dump_json())
    with pytest.raises(InputError, match="no engine config.json"):
        load_runner(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"version": "1", "pretrained_config": {}, "build_config": {}})
    )
    with pytest.raises(InputError, match="build_config.max_batch_size: Field required"):
        load_runner(tmp_path)
    limits = {"max_batch_size": 1, "max_input_len": 8, "max_seq_len": 16}
    (tmp_path / "config.json").write_text(
        json.dumps({"version": "1", "pretrained_config": {}, "build_config": limits})
    )
    (tmp_path / "build_info.json").write_text(
        EngineInfo(backend="trtllm-engine", target="a100-40gb").model_dump_json()
    )
    with pytest.raises(MissingDependencyError, match="needs TensorRT-LLM 1.2.1"):
        load_runner(tmp_path)


def test_build_info_from_before_backends_had_names_still_loads(tmp_path):
    """Engines published before the backend seam record `runtime` and the CPU's old target name."""
    for runtime, target, backend, now in (
        ("cpu-reference", "cpu-reference", "reference", "cpu"),
        ("tensorrt-llm", "a100-40gb", "trtllm-engine", "a100-40gb"),
    ):
        (tmp_path / "build_info.json").write_text(json.dumps({"runtime": runtime, "target": target}))
        info = read_engine_info(tmp_path)
        assert (info.backend, info.target) == (backend, now)


# --- the TensorRT-LLM runner against a stand-in ModelRunnerCpp ---------------------------------------
# Upstream behaviour (TensorRT-LLM 1.x): tensorrt_llm/runtime/model_runner_cpp.py
# (NVIDIA/TensorRT-LLM@03832911f05dbe10232949eb3c56aac45578e30a): from_dir's keyword parameters;
# generate(return_dict=True) -> _fill_output allocates the context logits as one zero-filled
# (batch, max_input_len, vocab) tensor on the GPU in the engine's logits dtype, fills each request's
# rows, then ModelRunnerMixin._prepare_outputs (runtime/model_runner.py,
# NVIDIA/TensorRT-LLM@0243026ffeb359ec54dba338fd6545692a5a722d) returns a *list*: with packed input it
# flattens that tensor and cuts it at the cumulative input lengths. The executor's KV cache takes the
# smaller of max_tokens and free_gpu_memory_fraction (cpp/include/tensorrt_llm/executor/executor.h,
# KvCacheConfig::mMaxTokens, NVIDIA/TensorRT-LLM@879039f6d58336c8208f082550757686ece29ae7).


class OnGpu:
    """A CUDA tensor: it can be copied to the host; anything else (a .float() widening) allocates on the GPU."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor
        self.shape, self.dtype = tensor.shape, tensor.dtype

    def to(self, device):
        assert str(device) == "cpu", f"moved to {device}"
        return self._tensor.clone()

    def cpu(self):
        return self.to("cpu")

    def __getattr__(self, name):
        raise AssertionError(f"{name}() on the GPU copy of the context logits")


VOCAB = 11


def expected_logits(ids: list[int]) -> torch.Tensor:
    """What the stand-in engine computes for one sequence: distinct rows per (token, position)."""
    rows = torch.tensor(
        [[(7 * token + 3 * position + v) % VOCAB for v in range(VOCAB)] for position, token in enumerate(ids)]
    )
    return rows.half()


class FakeModelRunnerCpp:
    """ModelRunnerCpp.from_dir(...).generate as the engine's gather_context_logits makes it answer."""

    def __init__(self, *, gather_context_logits: bool = True, max_batch_size: int = 8) -> None:
        self.gather_context_logits = gather_context_logits
        self.max_batch_size, self.max_input_len, self.max_seq_len = max_batch_size, 64, 96
        self.calls: list[list[int]] = []
        self.shut_down = False
        self.executor = SimpleNamespace(shutdown=self._shutdown)

    def _shutdown(self) -> None:
        self.shut_down = True

    @classmethod
    def from_dir(
        cls,
        engine_dir: str,
        *,
        lora_dir=None,
        rank: int = 0,
        max_batch_size=None,
        max_input_len=None,
        max_output_len=None,
        max_beam_width=None,
        max_attention_window_size=None,
        sink_token_length=None,
        kv_cache_free_gpu_memory_fraction=None,
        cross_kv_cache_fraction=None,
        debug_mode: bool = False,
        max_tokens_in_paged_kv_cache=None,
        kv_cache_enable_block_reuse: bool = False,
        enable_chunked_context: bool = False,
        gather_generation_logits: bool = False,
    ):
        """The from_dir parameters the pipeline may pass (a subset of upstream's, same names)."""

    def generate(
        self, batch_input_ids, *, max_new_tokens=1, end_id=None, pad_id=None, return_dict=False, **kw
    ):
        lengths = [len(ids) for ids in batch_input_ids]
        self.calls.append(lengths)
        if len(lengths) > self.max_batch_size:  # _check_inputs
            raise RuntimeError(f"Input batch size ({len(lengths)}) exceeds the engine or specified limit")
        outputs = {"output_ids": torch.zeros(len(lengths), 1, self.max_seq_len, dtype=torch.int32)}
        if self.gather_context_logits:
            padded = torch.zeros(len(lengths), max(lengths), VOCAB, dtype=torch.float16)
            for i, ids in enumerate(batch_input_ids):
                padded[i, : lengths[i]] = expected_logits(ids.tolist())
            flat = padded.flatten(end_dim=-2)
            cuts = [0, *torch.tensor(lengths).cumsum(0).tolist()]
            outputs["context_logits"] = [OnGpu(flat[s:e]) for s, e in zip(cuts[:-1], cuts[1:], strict=True)]
        return outputs


def _trt_runner(fake: FakeModelRunnerCpp, tmp_path: Path):
    from pipeline.backends.trtllm_engine.runner import TensorRTRunner
    from pipeline.runtime.limits import EngineLimits

    limits = EngineLimits(max_batch_size=fake.max_batch_size, max_input_len=64, max_seq_len=96)
    return TensorRTRunner(fake, {"build_config": {}}, limits, engine_dir=tmp_path)


def test_contract_tensorrt_runner_returns_each_sequences_context_logits_uneven_lengths_included(tmp_path):
    import torch

    fake = FakeModelRunnerCpp()
    # The stand-in is as upstream: in one call with uneven lengths, a sequence after a shorter one
    # gets the padding of the one before it.
    ids = [torch.tensor(s, dtype=torch.int32) for s in ([4, 5], [1, 2, 3])]
    misplaced = fake.generate(ids, return_dict=True)["context_logits"][1].cpu()
    assert not torch.equal(misplaced, expected_logits([1, 2, 3]))
    fake.calls.clear()

    runner = _trt_runner(fake, tmp_path)
    sequences = [[4, 5], [1, 2, 3], [9], [6, 7, 8]]
    logits = runner.context_logits(sequences)
    assert [tuple(t.shape) for t in logits] == [(2, VOCAB), (3, VOCAB), (1, VOCAB), (3, VOCAB)]
    for sequence, got in zip(sequences, logits, strict=True):
        assert got.dtype == torch.float16 and torch.equal(
            got, expected_logits(sequence)
        )  # on the host, not widened
    assert sorted(fake.calls) == [[1], [2], [3, 3]]  # one call per length


def test_tensorrt_runner_refuses_an_engine_without_context_logits_and_frees_its_executor(tmp_path):
    fake = FakeModelRunnerCpp(gather_context_logits=False)
    runner = _trt_runner(fake, tmp_path)
    with pytest.raises(InputError, match="built without --gather_context_logits"):
        runner.context_logits([[1, 2]])
    runner.close()
    assert fake.shut_down


# What ModelRunnerCpp.generate does with sampling keyword arguments, TensorRT-LLM 1.2.x:
# tensorrt_llm/runtime/model_runner_cpp.py @ 03832911f05dbe10232949eb3c56aac45578e30a keeps only the
# kwargs among its accepted_parameters (any other name is dropped without a word, so the stand-in
# refuses it), renames num_beams to beam_width and random_seed to seed, turns top_p 0.0 into None, and
# builds executor.SamplingConfig, whose constructor checks its values (cpp/tensorrt_llm/executor/
# samplingConfig.cpp @ 3585984b32cded5cc002d3087d3da4b0fd9fb8a5); unset ones stay at the runtime's
# defaults: top_k 0, top_p 0 (layers/defaultDecodingParams.h @ 1020a8d799d04a1776f8eec19496ecafa2558506).
# runtime/samplingConfig.h validate() (@ 09e2cf77a868f246600630ab5adc4c6135db9c28) makes temperature 0
# greedy: temperature 1, top_k 1 and top_p 1 where set. The sampling layers then apply
# setupTopKRuntimeArgs (cpp/tensorrt_llm/kernels/samplingTopKKernels.cu @ 03961722): k == 0 and p == 0
# -> k = 1 (greedy); k > 0 and p == 0 -> p = 1; k > 0 samples the top k (topKStage2Sampling, threshold p
# of their mass), k == 0 is left to top-p sampling over the vocabulary. Outputs (_fill_output):
# output_ids [batch, sequences, max_seq_len] (prompt + new tokens, padded with end_id),
# sequence_lengths [batch, sequences], log_probs [batch, sequences, new tokens].
_ACCEPTED_SAMPLING = frozenset(
    {
        "num_beams", "top_k", "top_p", "top_p_min", "top_p_reset_ids", "top_p_decay", "temperature",
        "min_tokens", "beam_search_diversity_rate", "repetition_penalty", "presence_penalty",
        "frequency_penalty", "length_penalty", "early_stopping", "no_repeat_ngram_size", "random_seed",
        "num_return_sequences", "min_p", "beam_width_array",
    }
)  # fmt: skip


def upstream_sampling_config(kwargs: dict) -> dict:
    """The executor SamplingConfig ModelRunnerCpp.generate builds from its kwargs, checked as its
    constructor checks it, with temperature 0 and the top-k/top-p defaults resolved as the runtime does."""
    unknown = set(kwargs) - _ACCEPTED_SAMPLING
    assert not unknown, f"ModelRunnerCpp.generate would drop {sorted(unknown)} without a word"
    renames = {"num_beams": "beam_width", "random_seed": "seed"}
    config = {renames.get(k, k): v for k, v in kwargs.items()}
    if config.get("top_p") == 0.0:
        config["top_p"] = None
    beam = config.setdefault("beam_width", 1)
    checks = {
        "beam_width": lambda v: v > 0,
        "top_k": lambda v: v >= 0,
        "top_p": lambda v: 0.0 < v <= 1.0,
        "temperature": lambda v: v >= 0.0,
        "min_tokens": lambda v: v >= 0,
        "repetition_penalty": lambda v: v > 0.0,
        "length_penalty": lambda v: v >= 0.0,
        "num_return_sequences": lambda v: v > 0 and (beam == 1 or v <= beam),
    }
    for name, ok in checks.items():
        assert config.get(name) is None or ok(config[name]), f"SamplingConfig refuses {name}={config[name]}"
    if config.get("temperature") == 0.0:
        config["temperature"] = 1.0
        config.update({name: 1 for name in ("top_k", "top_p") if config.get(name) is not None})
    k, p = config.get("top_k") or 0, config.get("top_p") or 0.0
    config["top_k"], config["top_p"] = (1 if k == 0 and p == 0.0 else k), (1.0 if k > 0 and p == 0.0 else p)
    return config


SAMPLED_LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5])


class SamplingModelRunnerCpp:
    """A ModelRunnerCpp whose engine gives every step the same logits, SAMPLED_LOGITS, and samples from
    them as the C++ runtime would for the keyword arguments it is given. generate's named parameters
    are upstream's (model_runner_cpp.py @ 03832911); it records the SamplingConfig and word lists."""

    max_seq_len = 4096

    def __init__(self) -> None:
        self.config: dict = {}
        self.words: dict = {}

    def generate(
        self,
        batch_input_ids,
        position_ids=None,
        encoder_input_ids=None,
        encoder_input_features=None,
        encoder_output_lengths=None,
        cross_attention_masks=None,
        mrope_params=None,
        sampling_config=None,
        lora_uids=None,
        lookahead_config=None,
        streaming=False,
        stopping_criteria=None,
        logits_processor_names=None,
        max_new_tokens=1,
        end_id=None,
        pad_id=None,
        bad_words_list=None,
        stop_words_list=None,
        return_dict=False,
        output_sequence_lengths=False,
        output_generation_logits=False,
        output_log_probs=False,
        output_cum_log_probs=False,
        prompt_table=None,
        prompt_tasks=None,
        input_token_extra_ids=None,
        return_all_generated_tokens=False,
        language_adapter_uids=None,
        mm_embedding_offloading=False,
        **kwargs,
    ):
        config = self.config = upstream_sampling_config(kwargs)
        self.words = {"bad_words_list": bad_words_list, "stop_words_list": stop_words_list}
        probs = torch.softmax(SAMPLED_LOGITS / config.get("temperature", 1.0), dim=-1)
        log_softmax = probs.log()  # the whole vocabulary's, as topKStage2Sampling returns it
        k, p = config["top_k"], config["top_p"]
        if k > 0:
            probs = probs.masked_fill(probs < probs.topk(k).values[-1], 0.0)
        else:  # top-p: the smallest set of most likely tokens whose mass reaches p
            ordered, order = probs.sort(descending=True)
            keep = (ordered.cumsum(0) - ordered) < p
            probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
        generator = torch.Generator().manual_seed(config.get("seed") or 0)
        batch, sequences = len(batch_input_ids), config.get("num_return_sequences") or 1
        drawn = torch.multinomial(probs, batch * sequences * max_new_tokens, True, generator=generator)
        drawn = drawn.view(batch, sequences, max_new_tokens)
        ids = torch.full((batch, sequences, self.max_seq_len), end_id, dtype=torch.int32)
        lengths = torch.zeros(batch, sequences, dtype=torch.int32)
        for i, prompt in enumerate(batch_input_ids):
            for s in range(sequences):
                ids[i, s, : len(prompt) + max_new_tokens] = torch.cat([prompt, drawn[i, s].int()])
                lengths[i, s] = len(prompt) + max_new_tokens
        outputs = {"output_ids": ids, "sequence_lengths": lengths}
        if output_log_probs:
            outputs["log_probs"] = log_softmax[drawn]
        return outputs


def _sampling_runner(tmp_path):
    from pipeline.backends.trtllm_engine.runner import TensorRTRunner
    from pipeline.runtime.limits import EngineLimits

    fake = SamplingModelRunnerCpp()
    return fake, TensorRTRunner(fake, {"build_config": {}}, EngineLimits(4, 8, 4096), engine_dir=tmp_path)


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, 0), (0.7, 0), (1.3, 3)])
def test_contract_tensorrt_runner_samples_from_the_distribution_the_reference_runtime_samples(
    tmp_path, temperature, top_k
):
    """Issue 21 item 6: top_k 0 with temperature > 0 must mean the whole vocabulary on both runtimes."""
    from pipeline.runtime.sampling import SamplingParams, TokenSampler

    draws = 4000
    sampling = SamplingParams(temperature=temperature, top_k=top_k, seed=11)
    _, runner = _sampling_runner(tmp_path)
    engine = runner.generate([[1]], max_new_tokens=draws, sampling=sampling)[0]
    reference = TokenSampler(sampling).next_tokens(SAMPLED_LOGITS.expand(draws, -1))[0].tolist()
    expected = torch.softmax(SAMPLED_LOGITS / temperature, dim=-1)
    if top_k:
        expected[top_k:] = 0.0  # SAMPLED_LOGITS is sorted: its first k are the top k
        expected /= expected.sum()
    # Each frequency of n draws has a standard deviation sqrt(q(1 - q) / n) <= 0.5 / sqrt(n): five of
    # them (0.040 for n = 4000) is passed by chance once in ~1.7 million per token.
    bound = 5 * 0.5 / draws**0.5
    for tokens in (engine, reference):
        frequency = torch.bincount(torch.tensor(tokens), minlength=len(SAMPLED_LOGITS)) / draws
        assert (frequency - expected).abs().max() < bound, (frequency, expected)


def test_contract_tensorrt_runner_passes_every_sampling_option_under_upstreams_name(tmp_path):
    """Each option of SamplingParams reaches the executor's SamplingConfig, the word lists and the log
    probabilities reach generate, under ModelRunnerCpp's names (the stand-in refuses any other)."""
    from pipeline.runtime.sampling import Penalties, SamplingParams

    sampling = SamplingParams(
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        seed=13,
        penalties=Penalties(repetition=1.3, presence=0.4, frequency=0.2, min_tokens=3),
        length_penalty=0.5,
        num_return_sequences=2,
    )
    fake, runner = _sampling_runner(tmp_path)
    log_probs: list[list[float]] = []
    rows = runner.generate(
        [[1, 2], [3]],
        max_new_tokens=4,
        sampling=sampling,
        bad_words=[[[6]], [[5, 7], [4]]],
        stop_words=[[], [[2, 3]]],
        log_probs=log_probs,
    )
    assert fake.config == {
        "beam_width": 1,
        "num_return_sequences": 2,
        "temperature": 0.7,
        "top_k": 5,
        "top_p": 0.9,
        "seed": 13,
        "repetition_penalty": 1.3,
        "presence_penalty": 0.4,
        "frequency_penalty": 0.2,
        "min_tokens": 3,
        "length_penalty": 0.5,
    }
    # per request (one per prompt, not per returned sequence): its words, each a token sequence
    assert fake.words == {"bad_words_list": [[[6]], [[5, 7], [4]]], "stop_words_list": [[], [[2, 3]]]}
    assert len(rows) == 4 and all(len(row) == 4 for row in rows)  # two sequences per prompt, in order
    whole = torch.log_softmax(SAMPLED_LOGITS / 0.7, dim=-1)
    # The stand-in takes log(softmax), as upstream's sampling kernel returns it; log_softmax is another
    # float32 evaluation of the same value. Each sits within a few roundings (2^-24 of p each: the exp,
    # the 8-term sum, the divide, the log) of log p, an absolute error in log space: 16 roundings bound
    # their difference (an AMD EPYC's vectorized exp differed by 2).
    assert log_probs == [
        [pytest.approx(float(whole[t]), rel=0, abs=16 * 2**-24) for t in row] for row in rows
    ]


def test_contract_tensorrt_runner_decodes_greedily_by_default(tmp_path):
    fake, runner = _sampling_runner(tmp_path)
    tokens = runner.generate([[1]], max_new_tokens=16)[0]
    assert fake.config["top_k"] == 1 and tokens == [0] * 16  # the argmax of SAMPLED_LOGITS, every step
    assert fake.words == {"bad_words_list": None, "stop_words_list": None}


def test_the_model_runner_stand_in_refuses_a_name_upstream_would_drop():
    """Without this, a misspelt option (seed for random_seed) would pass the tests and be ignored on a GPU."""
    with pytest.raises(AssertionError, match=r"drop \['seed'\]"):
        SamplingModelRunnerCpp().generate([torch.tensor([1])], max_new_tokens=1, end_id=0, seed=3)


def test_contract_gate_runner_sizes_the_kv_cache_to_its_batch_not_to_free_memory():
    import inspect

    from pipeline.backends.trtllm_engine.runner import runner_options
    from pipeline.runtime.limits import EngineLimits

    limits = EngineLimits(max_batch_size=8, max_input_len=1024, max_seq_len=1088)
    config = {"build_config": {"plugin_config": {"use_paged_context_fmha": True}}}
    gate = runner_options(config, limits, size_kv_cache_to_batch=True)
    inspect.signature(FakeModelRunnerCpp.from_dir).bind("engine", rank=0, **gate)  # names upstream takes
    assert gate["max_tokens_in_paged_kv_cache"] == 8 * 1088 and gate["max_batch_size"] == 8
    assert gate["enable_chunked_context"] is True
    served = runner_options(config, limits, size_kv_cache_to_batch=False)
    assert "max_tokens_in_paged_kv_cache" not in served  # bench and smoke: TensorRT-LLM's 0.9 of free memory
