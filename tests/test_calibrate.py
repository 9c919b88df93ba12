"""Calibration and export of the tiny Mistral (GQA, rope_theta 1e6): checkpoints, verifier, OOM back-off."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from pipeline.calibration import export_checkpoint
from pipeline.calibration.data import token_samples
from pipeline.calibration.loop import CalibrationLoop, is_out_of_memory
from pipeline.calibration.verify import (
    CheckpointMismatchError,
    check_config,
    read_safetensors_header,
    verify_checkpoint,
)
from pipeline.core.errors import InputError, StageError
from pipeline.core.hashing import sha256_file
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import execute, status
from pipeline.execution.results import TaskState
from pipeline.facts.architecture import Architecture
from pipeline.facts.config import CalibrationSection, parse_config
from pipeline.planning.tasks import plan_tasks, select_tasks
from pipeline.stages import STAGES
from pipeline.stages.base import StageOutcome

LOG = logging.getLogger("test-calibrate")
LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")


def settings(dataset: Path, **overrides) -> CalibrationSection:
    return CalibrationSection(
        dataset=dataset, **({"samples": 16, "seq_len": 64, "batch_size": 4} | overrides)
    )


@pytest.fixture(scope="module")
def offline_mix() -> Path:
    return Path(__file__).resolve().parent.parent / "calib_data" / "offline-mix.jsonl"


@pytest.fixture(scope="module")
def exported(tiny_model_dir, offline_mix, tmp_path_factory):
    """Both INT8 precisions of the tiny model, exported once for the module."""
    out = {}
    for precision in ("int8_sq", "int8_wo"):
        reporter = RecordingReporter()
        directory = tmp_path_factory.mktemp(precision) / "checkpoint"
        record = export_checkpoint(
            tiny_model_dir,
            precision,
            settings(offline_mix),
            directory,
            reporter=reporter,
            log=LOG,
            instruct=True,
        )
        out[precision] = (directory, record, reporter)
    return out


def trt_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def test_int8_sq_exports_int8_linears_with_smoothquant_scales(exported, offline_mix):
    directory, record, reporter = exported["int8_sq"]
    config = trt_config(directory)
    assert config["quantization"]["quant_algo"] == "W8A8_SQ_PER_CHANNEL"
    assert config["rotary_base"] == 1_000_000.0
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_size"]) == (2, 1, 64)
    tensors = read_safetensors_header(directory / "rank0.safetensors")
    qkv = "transformer.layers.1.attention.qkv"
    assert tensors[qkv + ".weight"] == ("I8", ((2 + 2 * 1) * 64, 128))  # GQA: q 2 heads, k and v 1 each
    assert tensors[qkv + ".weights_scaling_factor"] == ("F32", (256,))
    assert tensors[qkv + ".activation_scaling_factor"] == ("F32", (1,))
    assert tensors[qkv + ".prequant_scaling_factor"] == ("F16", (128,))
    assert tensors["lm_head.weight"] == ("F16", (512, 128))
    assert tensors["transformer.vocab_embedding.weight"] == ("F16", (512, 128))
    # The record says what was calibrated on, how, and what the activations looked like.
    run = record.calibration
    assert run is not None and run.samples == 16 and run.seq_len == 64 and run.tokens > 16
    assert run.dataset.sha256 == sha256_file(offline_mix) and run.dataset.records == 512
    assert run.instruct_template and run.smoothquant_alpha == 0.5
    assert set(record.versions) == {"nvidia-modelopt", "torch", "transformers"}
    assert [r.layer for r in run.activation_ranges] == [0, 1]
    for layer in run.activation_ranges:
        assert layer.linears == 7  # q, k, v, o, gate, up, down
        assert 0 < layer.input_amax_min <= layer.input_amax_mean <= layer.input_amax_max
    assert reporter.advanced["calibrating"] == 16
    assert record.tensors == len(tensors) and record.repairs == []


def test_int8_wo_exports_fp16_weights_labelled_w8a16(exported):
    directory, record, _ = exported["int8_wo"]
    config = trt_config(directory)
    assert config["quantization"]["quant_algo"] == "W8A16"
    assert config["rotary_base"] == 1_000_000.0
    tensors = read_safetensors_header(directory / "rank0.safetensors")
    for linear in LINEARS:
        assert tensors[f"transformer.layers.0.{linear}.weight"][0] == "F16"
    assert not any("scaling_factor" in name for name in tensors)
    assert record.calibration is None


def test_fp16_precision_exports_unquantized(tiny_model_dir, offline_mix, tmp_path):
    record = export_checkpoint(
        tiny_model_dir, "bf16", settings(offline_mix), tmp_path, reporter=RecordingReporter(), log=LOG
    )
    assert trt_config(tmp_path)["quantization"]["quant_algo"] is None
    assert trt_config(tmp_path)["dtype"] == "bfloat16" and record.export_dtype == "bfloat16"


def test_int4_awq_exports_packed_int4_with_group_and_prequant_scales(tiny_model_dir, offline_mix, tmp_path):
    record = export_checkpoint(
        tiny_model_dir,
        "int4_awq",
        settings(offline_mix, samples=4, seq_len=32),
        tmp_path,
        reporter=RecordingReporter(),
        log=LOG,
    )
    config = trt_config(tmp_path)["quantization"]
    assert (config["quant_algo"], config["group_size"], config["kv_cache_quant_algo"]) == (
        "W4A16_AWQ",
        128,
        None,
    )
    tensors = read_safetensors_header(tmp_path / "rank0.safetensors")
    proj = "transformer.layers.0.mlp.proj"  # [hidden 128, intermediate 256]
    assert tensors[proj + ".weight"] == ("I8", (64, 256))  # two int4 values per byte along the outputs
    assert tensors[proj + ".weights_scaling_factor"] == ("F32", (128, 2))  # one per 128 inputs
    assert tensors[proj + ".prequant_scaling_factor"] == ("F16", (256,))
    assert tensors["lm_head.weight"] == ("F16", (512, 128))
    assert record.calibration is not None and record.quant_algo == "W4A16_AWQ"


def test_fp8_exports_e4m3_weights_per_tensor_scales_and_an_fp8_kv_cache_on_the_cpu(
    tiny_model_dir, offline_mix, tmp_path
):
    record = export_checkpoint(
        tiny_model_dir,
        "fp8",
        settings(offline_mix, samples=4),
        tmp_path,
        reporter=RecordingReporter(),
        log=LOG,
    )
    config = trt_config(tmp_path)["quantization"]
    assert (config["quant_algo"], config["kv_cache_quant_algo"]) == ("FP8", "FP8")
    tensors = read_safetensors_header(tmp_path / "rank0.safetensors")
    qkv = "transformer.layers.1.attention.qkv"
    assert tensors[qkv + ".weight"] == ("F8_E4M3", (256, 128))
    assert tensors[qkv + ".weights_scaling_factor"] == ("F32", (1,))
    assert tensors[qkv + ".activation_scaling_factor"] == ("F32", (1,))
    assert tensors["transformer.layers.1.attention.kv_cache_scaling_factor"] == ("F32", (1,))
    assert record.device == "cpu" and record.kv_cache_quant_algo == "FP8"


def test_a_model_whose_linears_do_not_split_into_awq_groups_is_refused_before_loading(
    tiny_model_dir, tmp_path
):
    hf = json.loads((tiny_model_dir / "config.json").read_text())
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(hf | {"intermediate_size": 176})
    )  # no weights: never loaded
    with pytest.raises(InputError) as err:
        export_checkpoint(
            model,
            "int4_awq",
            settings(tmp_path / "absent.jsonl"),
            tmp_path / "out",
            reporter=RecordingReporter(),
            log=LOG,
        )
    assert "intermediate_size 176 is not a multiple of int4_awq's group size 128" in err.value.message
    assert str(model / "config.json") in str(err.value)


def test_int8_kv_cache_adds_kv_scales(tiny_model_dir, offline_mix, tmp_path):
    record = export_checkpoint(
        tiny_model_dir,
        "int8_wo",
        settings(offline_mix, samples=4),
        tmp_path,
        reporter=RecordingReporter(),
        log=LOG,
        kv_cache_dtype="int8",
    )
    config = trt_config(tmp_path)["quantization"]
    assert (config["quant_algo"], config["kv_cache_quant_algo"]) == ("W8A16", "INT8")
    tensors = read_safetensors_header(tmp_path / "rank0.safetensors")
    assert tensors["transformer.layers.0.attention.kv_cache_scaling_factor"] == ("F32", (1,))
    assert tensors["transformer.layers.0.mlp.fc.weight"][0] == "F16"
    assert record.calibration is not None and record.calibration.samples == 4


# --- the verifier ------------------------------------------------------------------------------


@pytest.fixture
def tiny_arch(tiny_model_dir) -> Architecture:
    return Architecture.load(tiny_model_dir)


@pytest.fixture
def sq_copy(exported, tmp_path) -> Path:
    directory = tmp_path / "checkpoint"
    shutil.copytree(exported["int8_sq"][0], directory)
    return directory


def edit_config(directory: Path, edit) -> None:
    config = trt_config(directory)
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))


def verify_sq(directory: Path, arch: Architecture, **kwargs):
    return verify_checkpoint(
        directory,
        arch,
        quant_algo="W8A8_SQ_PER_CHANNEL",
        kv_cache_quant_algo=None,
        export_dtype="float16",
        **kwargs,
    )


@pytest.mark.parametrize("bad_value", [None, 10000.0], ids=["missing", "wrong"])
def test_verifier_repairs_rotary_base_from_rope_theta_and_records_it(sq_copy, tiny_arch, bad_value):
    edit_config(
        sq_copy, lambda c: c.pop("rotary_base") if bad_value is None else c.update(rotary_base=bad_value)
    )
    with pytest.raises(CheckpointMismatchError, match="rotary_base is"):
        verify_sq(sq_copy, tiny_arch, repair=False)
    repairs = verify_sq(sq_copy, tiny_arch)
    assert [(r.field, r.found, r.fixed) for r in repairs] == [("rotary_base", bad_value, 1_000_000.0)]
    assert trt_config(sq_copy)["rotary_base"] == 1_000_000.0
    assert verify_sq(sq_copy, tiny_arch) == []  # repaired for good


def trtllm_from_hugging_face_config(hf: dict, handmade: dict) -> dict:
    """config.json as ModelOpt 0.37 writes it when tensorrt_llm is importable.

    modelopt/torch/export/tensorrt_llm_utils.py (nvidia-modelopt 0.37.0) convert_to_tensorrt_llm_config:
    with hf_config it updates its hand-built config with
    MODEL_MAP[architecture].config_class.from_hugging_face(...).to_dict() (LLaMAConfig for Mistral),
    then sets use_parallel_embedding, embedding_sharding_dim and logits_dtype, and skips its own
    rotary_base, mapping and quantization. The TensorRT-LLM side, field by field:
    tensorrt_llm/models/llama/config.py LLaMAConfig.from_hugging_face and to_dict
    (NVIDIA/TensorRT-LLM@04100fd0a70976e86e0ac117f34942d06c21545d) and
    tensorrt_llm/models/modeling_utils.py PretrainedConfig.__init__/to_dict and QuantConfig
    (NVIDIA/TensorRT-LLM@01ea6d79d454bb3ab10c7510a6f706ba039090c2).
    """
    heads = hf["num_attention_heads"]
    head_size = hf.get("head_dim", hf["hidden_size"] // heads)
    quantization = {
        # QuantConfig.to_dict is dataclasses.asdict; QuantAlgo is a StrEnum, so JSON holds its name
        "quant_algo": handmade["quantization"]["quant_algo"],
        "kv_cache_quant_algo": handmade["quantization"]["kv_cache_quant_algo"],
        "group_size": 128,
        "smoothquant_val": 0.5,
        "clamp_val": None,
        "use_meta_recipe": False,
        "has_zero_point": False,
        "pre_quant_scale": False,
        "exclude_modules": handmade["quantization"].get("exclude_modules"),
    }
    trtllm = {
        "architecture": hf["architectures"][0],
        "dtype": handmade["dtype"],
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": heads,
        "hidden_act": hf["hidden_act"],
        "logits_dtype": "float32",
        "norm_epsilon": hf["rms_norm_eps"],
        "runtime_defaults": None,
        "position_embedding_type": "rope_gpt_neox",
        "num_key_value_heads": hf.get("num_key_value_heads", heads),
        "intermediate_size": hf["intermediate_size"],
        "max_position_embeddings": hf["max_position_embeddings"],
        "mapping": {"world_size": 1, "gpus_per_node": 8, "cp_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": quantization,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "head_size": head_size,
        "qk_layernorm": False,
        "rotary_embedding_dim": head_size,
        "tie_word_embeddings": hf.get("tie_word_embeddings", False),
        # LLaMAConfig: getattr(hf_config, "rope_theta", 10000.0) -- 10000 when transformers 5 moved it
        "mlp_bias": False,
        "attn_bias": False,
        "rotary_base": hf.get("rope_theta", 10000.0),
        "rotary_scaling": hf.get("rope_scaling"),
        "residual_mlp": False,
        "disable_weight_only_quant_plugin": False,
        "fc_after_embed": False,
        "use_input_layernorm_in_first_layer": True,
        "use_last_layernorm": True,
        "layer_idx_offset": 0,
        "moe": {"num_experts": 0, "shared_expert_intermediate_size": 0, "top_k": 0},
        "remove_duplicated_kv_heads": False,
        "embedding_multiplier": 1.0,
        "attention_multiplier": 1.0,
        "residual_multiplier": 1.0,
        "output_multiplier_scale": 1.0,
    }
    merged = {k: v for k, v in handmade.items() if k not in ("rotary_base", "mapping", "quantization")}
    merged.update(trtllm)
    merged.update(use_parallel_embedding=True, embedding_sharding_dim=0, logits_dtype=handmade["dtype"])
    return merged


@pytest.mark.parametrize("transformers_major", [4, 5])
def test_verifier_accepts_the_config_modelopt_writes_through_tensorrt_llm(
    sq_copy, tiny_arch, tiny_model_dir, transformers_major
):
    """In the container tensorrt_llm is importable, so ModelOpt's export takes TensorRT-LLM's own
    from_hugging_face path: same checked fields, many more around them; the weights are the same."""
    hf = json.loads((tiny_model_dir / "config.json").read_text())
    if transformers_major == 5:
        hf["rope_parameters"] = {"rope_type": "default", "rope_theta": hf.pop("rope_theta")}
    edit_config(sq_copy, lambda c: c.update(trtllm_from_hugging_face_config(hf, dict(c))) or None)
    written = trt_config(sq_copy)
    assert written["quantization"]["group_size"] == 128 and written["moe"]["num_experts"] == 0
    repairs = verify_sq(sq_copy, tiny_arch)
    if transformers_major == 4:
        assert repairs == []  # accepted as it is
    else:  # from_hugging_face found no rope_theta attribute and wrote its default
        assert [(r.field, r.found, r.fixed) for r in repairs] == [("rotary_base", 10000.0, 1_000_000.0)]
    assert trt_config(sq_copy)["rotary_base"] == 1_000_000.0


def test_rope_theta_is_read_from_transformers5_rope_parameters(tiny_model_dir):
    hf = json.loads((tiny_model_dir / "config.json").read_text())
    theta = hf.pop("rope_theta")
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    arch = Architecture.from_hf_config(hf, "config.json")
    assert arch.rope_theta == 1_000_000.0
    exported_by_5x = {"dtype": "float16", "quantization": {"quant_algo": None, "kv_cache_quant_algo": None}}
    fixed, repairs, _ = check_config(
        exported_by_5x, arch, quant_algo=None, kv_cache_quant_algo=None, export_dtype="float16"
    )
    assert fixed["rotary_base"] == 1_000_000.0 and "rotary_base" not in exported_by_5x
    assert "rotary_base" in {r.field for r in repairs}


def test_verifier_fails_on_a_wrong_head_count(sq_copy, tiny_arch):
    edit_config(sq_copy, lambda c: c.update(num_attention_heads=8))
    with pytest.raises(CheckpointMismatchError) as err:
        verify_sq(sq_copy, tiny_arch)
    assert err.value.problems == ["num_attention_heads is 8, the Hugging Face config says 2"]
    assert trt_config(sq_copy)["num_attention_heads"] == 8  # nothing is rewritten on failure


def check_sq(trt: dict, arch: Architecture):
    return check_config(
        trt, arch, quant_algo="W8A8_SQ_PER_CHANNEL", kv_cache_quant_algo=None, export_dtype="float16"
    )


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("vocab_size", 1024),
        ("hidden_size", 256),
        ("num_key_value_heads", 2),
        ("head_size", 32),
        ("dtype", "bfloat16"),
    ],
)
def test_fields_that_shape_tensors_are_never_repaired(exported, tiny_arch, field, bad):
    _, repairs, problems = check_sq(trt_config(exported["int8_sq"][0]) | {field: bad}, tiny_arch)
    assert repairs == [] and len(problems) == 1 and problems[0].startswith(f"{field} is {bad!r}")


@pytest.mark.parametrize(
    ("field", "bad", "good"), [("norm_epsilon", 1e-6, 1e-5), ("max_position_embeddings", 2048, 512)]
)
def test_fields_that_shape_no_tensor_are_repaired(exported, tiny_arch, field, bad, good):
    fixed, repairs, problems = check_sq(trt_config(exported["int8_sq"][0]) | {field: bad}, tiny_arch)
    assert problems == [] and fixed[field] == good
    assert [(r.field, r.found, r.fixed) for r in repairs] == [(field, bad, good)]


def test_a_sliding_window_is_carried_into_the_checkpoint_config(exported, tiny_arch):
    from dataclasses import replace

    trt = trt_config(exported["int8_sq"][0])
    assert "sliding_window" not in trt and check_sq(trt, tiny_arch)[1] == []  # the tiny model has none
    fixed, repairs, _ = check_sq(trt, replace(tiny_arch, sliding_window=128))
    assert fixed["sliding_window"] == 128 and [r.field for r in repairs] == ["sliding_window"]
    # A window as long as the context is no window at all.
    assert check_sq(trt, replace(tiny_arch, sliding_window=512))[1] == []


def test_verifier_catches_fp16_weights_labelled_w8a8(exported, tiny_arch, tmp_path):
    """ModelOpt's silent mislabel: fp16 weights under quant_algo W8A8_SQ_PER_CHANNEL."""
    directory = tmp_path / "mislabelled"
    shutil.copytree(exported["int8_wo"][0], directory)
    edit_config(directory, lambda c: c["quantization"].update(quant_algo="W8A8_SQ_PER_CHANNEL"))
    with pytest.raises(CheckpointMismatchError) as err:
        verify_sq(directory, tiny_arch)
    assert "tensor transformer.layers.0.attention.qkv.weight is F16, expected I8" in err.value.problems
    assert any("activation_scaling_factor is missing" in p for p in err.value.problems)


def test_verifier_catches_wrong_label_and_truncated_weights(sq_copy, tiny_arch):
    edit_config(sq_copy, lambda c: c["quantization"].update(quant_algo="W8A16"))
    with pytest.raises(
        CheckpointMismatchError, match="quant_algo is 'W8A16', expected 'W8A8_SQ_PER_CHANNEL'"
    ):
        verify_sq(sq_copy, tiny_arch)
    (sq_copy / "rank0.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(InputError, match="bad header length"):
        verify_sq(sq_copy, tiny_arch)


# --- calibration data, the loop and its out-of-memory back-off ---------------------------------


def test_instruct_samples_use_the_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = token_samples(["The river measured the bridge."], tokenizer, seq_len=64, instruct=False)[0]
    chat = token_samples(["The river measured the bridge."], tokenizer, seq_len=64, instruct=True)[0]
    inst = tokenizer.convert_tokens_to_ids("[INST]")
    assert chat[:2] == [tokenizer.bos_token_id, inst] and inst not in plain
    assert len(token_samples(["word " * 200], tokenizer, seq_len=32, instruct=True)[0]) == 32
    tokenizer.chat_template = None
    with pytest.raises(InputError, match="no chat template"):
        token_samples(["x"], tokenizer, seq_len=8, instruct=True)


def loop_over(samples: list[list[int]], *, batch_size: int, forward) -> CalibrationLoop:
    return CalibrationLoop(
        samples,
        batch_size=batch_size,
        pad_id=0,
        device="cpu",
        reporter=RecordingReporter(),
        log=LOG,
        forward=forward,
    )


def oom_above_batch_one(seen: list[int]):
    """A forward that runs out of memory for any batch of more than one sequence."""
    import torch

    def forward(model, input_ids, attention_mask):
        seen.append(input_ids.shape[0])
        if input_ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        model(input_ids=input_ids, attention_mask=attention_mask)

    return forward


def test_loop_halves_the_batch_on_oom_and_covers_every_sample_once():
    import torch

    rows: list[list[int]] = []
    seen: list[int] = []
    samples = [[1] * n for n in (3, 9, 5, 7, 2)]
    reporter = RecordingReporter()
    loop = CalibrationLoop(
        samples,
        batch_size=4,
        pad_id=0,
        device="cpu",
        reporter=reporter,
        log=LOG,
        forward=oom_above_batch_one(seen),
    )

    def model(input_ids, attention_mask):
        rows.extend(int(m.sum()) for m in attention_mask)
        assert torch.equal(input_ids * attention_mask, input_ids)  # padding is masked

    loop(model)
    assert seen[:3] == [4, 2, 1]
    assert sorted(rows) == [2, 3, 5, 7, 9] and rows[0] == 9  # each once, longest first
    assert loop.result.final_batch_size == 1 and loop.result.tokens == 26
    assert [(b.at_sample, b.from_batch, b.to_batch) for b in loop.result.backoffs] == [(0, 4, 2), (0, 2, 1)]
    assert "out of memory at calibration batch size 4: retrying with batch size 2" in reporter.text()


def test_loop_gives_up_at_batch_one_and_passes_other_errors_through():
    import torch

    def always_oom(model, input_ids, attention_mask):
        raise torch.OutOfMemoryError("out of memory")

    loop = loop_over([[1, 2]], batch_size=2, forward=always_oom)
    with pytest.raises(StageError, match="out of memory at calibration batch size 1"):
        loop(None)

    def broken(model, input_ids, attention_mask):
        raise RuntimeError("shape mismatch")

    loop = CalibrationLoop(
        [[1, 2]], batch_size=2, pad_id=0, device="cpu", reporter=RecordingReporter(), log=LOG, forward=broken
    )
    with pytest.raises(RuntimeError, match="shape mismatch"):
        loop(None)


def test_cpu_and_cuda_allocation_failures_count_as_out_of_memory():
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")
    )
    for make in CUDA_ALLOCATION_FAILURES.values():
        assert is_out_of_memory(make())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


# How CUDA reports running out of memory outside the caching allocator (torch's C10_CUDA_CHECK and
# TORCH_CUDABLAS_CHECK: "CUDA error: <cudaGetErrorString | cublas status> when calling ...").
CUDA_ALLOCATION_FAILURES = {
    "cuda runtime": lambda: __import__("torch").AcceleratorError("CUDA error: out of memory"),
    "cublas workspace": lambda: RuntimeError(
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
    ),
}


@pytest.mark.parametrize("failure", CUDA_ALLOCATION_FAILURES)
def test_loop_backs_off_on_cuda_allocation_failures_and_frees_the_step_first(monkeypatch, failure):
    """The failed step's activations are gone when the cache is emptied: not pinned by the traceback."""
    import weakref

    import torch

    alive: list[weakref.ref] = []
    freed_at_empty_cache: list[bool] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "empty_cache", lambda: freed_at_empty_cache.append(all(r() is None for r in alive))
    )

    def forward(model, input_ids, attention_mask):
        activations = torch.ones(input_ids.shape[0], 1024)  # what the step holds when it fails
        alive.append(weakref.ref(activations))
        if input_ids.shape[0] > 1:
            raise CUDA_ALLOCATION_FAILURES[failure]()

    loop = loop_over([[1, 2]] * 4, batch_size=4, forward=forward)
    loop(None)
    assert [(b.from_batch, b.to_batch) for b in loop.result.backoffs] == [(4, 2), (2, 1)]
    assert freed_at_empty_cache == [True, True]


def test_export_backs_off_on_injected_oom_and_still_exports(tiny_model_dir, offline_mix, tmp_path):
    seen: list[int] = []
    reporter = RecordingReporter()
    record = export_checkpoint(
        tiny_model_dir,
        "int8_sq",
        settings(offline_mix, samples=6, batch_size=4),
        tmp_path,
        reporter=reporter,
        log=LOG,
        forward=oom_above_batch_one(seen),
    )
    run = record.calibration
    assert run is not None and run.batch_size == 4 and run.final_batch_size == 1
    assert [(b.from_batch, b.to_batch) for b in run.backoffs] == [(4, 2), (2, 1)]
    assert "retrying with batch size 1" in reporter.text()
    assert seen.count(1) == 6 and run.samples == 6
    assert trt_config(tmp_path)["quantization"]["quant_algo"] == "W8A8_SQ_PER_CHANNEL"


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "no records (the file is empty)"), ('{"text": "fine"}\n{"text": \n', "line 2: not valid JSON")],
    ids=["empty", "corrupt"],
)
def test_bad_calibration_file_fails_before_loading_the_model(tmp_path, tiny_model_dir, content, expected):
    data = tmp_path / "calib.jsonl"
    data.write_text(content)
    no_weights = tmp_path / "model"  # loading this model would fail: the data must be refused first
    no_weights.mkdir()
    shutil.copy(tiny_model_dir / "config.json", no_weights)
    with pytest.raises(InputError) as err:
        export_checkpoint(
            no_weights, "int8_sq", settings(data), tmp_path / "out", reporter=RecordingReporter(), log=LOG
        )
    assert str(data) in err.value.message and expected in err.value.message


# --- the stage -----------------------------------------------------------------------------------


CONFIG = """
[model]
name = "tiny-mistral"
source = "tiny"
instruct = true
[target]
gpu = "cpu"
[quantization]
precisions = ["int8_sq", "int8_wo"]
[calibration]
dataset = "{dataset}"
samples = 8
seq_len = 48
batch_size = 4
[[profiles]]
name = "latency"
max_batch_size = 1
max_input_len = 64
max_seq_len = 128
"""


def fetch_stand_in(model_dir: Path):
    """The fetch stage's artifact layout (model/ = a Hugging Face folder), without the hub."""
    from fake_stages import StandIn

    def run(ctx):
        shutil.copytree(model_dir, ctx.out_dir / "model")
        return StageOutcome(summary="copied")

    return StandIn("fetch", run)


def test_stage_writes_checkpoint_and_reruns_only_when_the_data_changes(tmp_path, tiny_model_dir, offline_mix):
    dataset = tmp_path / "calib.jsonl"
    shutil.copy(offline_mix, dataset)
    config = parse_config(CONFIG.format(dataset=dataset), "test.toml", tmp_path)
    fetch = fetch_stand_in(tiny_model_dir)
    stages = {**STAGES, "fetch": fetch}
    store = ArtifactStore(tmp_path / "work")
    tasks = select_tasks(plan_tasks(config), {"calibrate"})

    report = execute(config, store, tasks, reporter=RecordingReporter(), stages=stages)
    assert report.error is None
    by_id = {r.task.id: r for r in report.results}
    sq = by_id["calibrate[trtllm-engine/int8_sq]"]
    assert sq.state is TaskState.ran and sq.summary.startswith("W8A8_SQ_PER_CHANNEL, 8 samples x 48 tokens")
    artifact = store.get("calibrate", ("trtllm-engine", "int8_sq"), sq.key)
    assert artifact is not None and (artifact.path / "checkpoint" / "rank0.safetensors").is_file()
    assert artifact.manifest.record["quant_algo"] == "W8A8_SQ_PER_CHANNEL"
    assert artifact.manifest.record["calibration"]["dataset"]["sha256"] == sha256_file(dataset)
    # The step's GPU memory (none on this host), proven released before the build (tests/test_gpu_memory.py).
    assert [m["step"] for m in artifact.manifest.record["gpu_memory"]] == ["calibration"]
    assert by_id["calibrate[trtllm-engine/int8_wo]"].summary.startswith("W8A16, no calibration")

    # Edited data: SmoothQuant reruns, weight-only (which reads no data) stays up to date.
    dataset.write_text(dataset.read_text().replace("The engineer", "The mechanic"))
    states = {r.task.id: (r.state, r.reason) for r in status(config, store, tasks, stages)}
    assert states["calibrate[trtllm-engine/int8_sq]"] == (TaskState.stale, "config changed: dataset_sha256")
    assert states["calibrate[trtllm-engine/int8_wo]"][0] is TaskState.up_to_date


def test_config_section_tracks_data_only_for_calibrated_precisions(tmp_path, offline_mix):
    config = parse_config(CONFIG.format(dataset=offline_mix), "test.toml", tmp_path)
    sq, wo = (t for t in plan_tasks(config) if t.stage == "calibrate")
    assert STAGES["calibrate"].config_section(config, sq)["dataset_sha256"] is not None
    assert "dataset_sha256" not in STAGES["calibrate"].config_section(config, wo)
    missing = parse_config(CONFIG.format(dataset=tmp_path / "absent.jsonl"), "test.toml", tmp_path)
    assert STAGES["calibrate"].config_section(missing, sq)["dataset_sha256"] is None


# --- a vocabulary ModelOpt pads for AWQ (issue 26, item 9) ---


@pytest.fixture(scope="module")
def vocab_1000_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with 1000 embedding rows (not a multiple of 64; hidden 128, a multiple of the
    group size), its tokenizer unchanged: a model's vocabulary may exceed its tokenizer's."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("vocab-1000")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.resize_token_embeddings(1000, mean_resizing=False)
    model.save_pretrained(folder, safe_serialization=True)
    for path in tiny_model_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")) or path.suffix == ".jinja":
            shutil.copyfile(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def awq_1000(vocab_1000_model, offline_mix, tmp_path_factory):
    """vocab_1000_model exported to int4_awq once: (checkpoint folder, calibration record)."""
    folder = tmp_path_factory.mktemp("awq-1000")
    record = export_checkpoint(
        vocab_1000_model,
        "int4_awq",
        settings(offline_mix, samples=4, seq_len=32),
        folder,
        reporter=RecordingReporter(),
        log=LOG,
    )
    return folder, record


@pytest.mark.slow
def test_an_awq_export_padded_to_64_rows_is_accepted_and_runs_at_the_real_vocabulary(
    vocab_1000_model, awq_1000
):
    """ModelOpt 0.37 pads vocab 1000 to 1024 for int4_awq (model_config_export.py, pad_embedding_lm_head
    in postprocess.py: zero rows); the verifier takes the documented multiple, checks the rows are
    zero and records the real size, which the reference runtime's logits then have."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.runtime import ReferenceModel
    from pipeline.runtime.limits import EngineLimits

    checkpoint, record = awq_1000
    config = trt_config(checkpoint)
    assert (config["vocab_size"], config["vocab_size_unpadded"]) == (1024, 1000)
    assert [(r.field, r.fixed) for r in record.repairs] == [("vocab_size_unpadded", 1000)]
    tensors = read_safetensors_header(checkpoint / "rank0.safetensors")
    assert tensors["transformer.vocab_embedding.weight"] == ("F16", (1024, 128))
    assert tensors["lm_head.weight"] == ("F16", (1024, 128))

    limits = EngineLimits(max_batch_size=1, max_input_len=16, max_seq_len=24)
    model = ReferenceModel.load(checkpoint, limits=limits)
    ids = torch.tensor([[1, 2, 3, 999]])
    hf = AutoModelForCausalLM.from_pretrained(vocab_1000_model, dtype=torch.float32)
    assert model.logits(ids).shape[-1] == hf(ids).logits.shape[-1] == 1000
    with pytest.raises(InputError, match=r"token ids must lie in \[0, 1000\)"):
        model.logits(torch.tensor([[1000]]))


@pytest.mark.slow
def test_a_padding_that_is_not_zero_or_not_the_documented_multiple_is_refused(
    vocab_1000_model, awq_1000, tmp_path
):
    from safetensors.torch import load_file, save_file

    arch = Architecture.load(vocab_1000_model)
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(awq_1000[0], checkpoint)
    weights = checkpoint / "rank0.safetensors"
    tensors = load_file(weights)
    tensors["lm_head.weight"][1010, 3] = 1.0  # a token the tokenizer cannot name, now pickable
    save_file(tensors, weights)
    with pytest.raises(CheckpointMismatchError) as err:
        verify_checkpoint(
            checkpoint, arch, quant_algo="W4A16_AWQ", kv_cache_quant_algo=None, export_dtype="float16"
        )
    assert err.value.problems == ["tensor lm_head.weight: rows 1000..1023 (vocabulary padding) are not zero"]

    config = trt_config(checkpoint)
    # Only AWQ pads, and only to the next multiple of 64: int8_sq's 1024, or AWQ's 1088, is a mismatch.
    sq = {"quant_algo": "W8A8_SQ_PER_CHANNEL", "kv_cache_quant_algo": None, "export_dtype": "float16"}
    _, _, problems = check_config(config, arch, **sq)
    assert "vocab_size is 1024, the Hugging Face config says 1000" in problems
    awq = {"quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": None, "export_dtype": "float16"}
    _, _, problems = check_config(config | {"vocab_size": 1088}, arch, **awq)
    assert problems == [
        "vocab_size is 1088, expected 1000 (the Hugging Face config) padded to a multiple of 64: 1024"
    ]
