"""The CPU reference runtime against its oracles: the Hugging Face model (fp16) and ModelOpt's
fake-quantized model (int8_sq, int8_wo, int4_awq, fp8), the Hugging Face linears re-derived from
each exported checkpoint, quantized KV caches, plus batching, sampling, limits and bad input.

Semantics checked against TensorRT-LLM v1.2.1: quantization/layers.py (Int8SmoothQuantLinear,
WeightOnlyQuantLinear), quantization/quantize.py (quantize_layers, exclude list),
models/llama/config.py (rotary_base default 10000.0), cutlass_preprocessors.cpp (symmetric_quantize);
and the nearest stored 1.2.x files: models/modeling_utils.py @ 27712aa7 (preprocess_perlayer_weights:
W4A16_AWQ weights transposed and read as quint4x2, group scales transposed and cast to the model dtype,
pre_quant_scale reshaped to [1, in]; FP8 int8-viewed weights as float8_e4m3fn; process_kv_scaling_factor:
kv_cache_scaling_factor = max(k, v), its reciprocal written into the cache), quantization/functional.py
(weight_only_groupwise_quant_matmul's non-plugin path), builder.py @ 008b2b8d (paged context FMHA off
with an INT8 KV cache). ModelOpt 0.37: torch/export/quant_utils.py pack_int4_in_uint8.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import tiny_checkpoint

from pipeline.core.errors import InputError
from pipeline.runtime import EngineLimits, ReferenceModel
from pipeline.runtime.kvcache import KV_CODECS, KVCache
from pipeline.runtime.linear import (
    Fp8Linear,
    GroupwiseLinear,
    SmoothQuantLinear,
    WeightOnlyLinear,
    quantize_weight_per_channel,
    round_to_fp8,
    unpack_int4,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def eval_ids(tiny_model_dir: Path) -> torch.Tensor:
    """Two 48-token windows of the offline evaluation text."""
    from transformers import AutoTokenizer

    texts = [json.loads(line)["text"] for line in (_repo() / "calib_data" / "offline-eval.jsonl").open()][:8]
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)("\n".join(texts))["input_ids"]
    return torch.tensor(ids[:96]).view(2, 48)


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    return tiny_checkpoint(tmp_path_factory, tiny_model_dir, "fp16")


@pytest.fixture(scope="module")
def fp16_model(fp16_dir: Path) -> ReferenceModel:
    return ReferenceModel.load(fp16_dir)


def _repo() -> Path:
    return Path(__file__).resolve().parent.parent


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(0, 1), b.flatten(0, 1), dim=-1).min().item()


def _copy_checkpoint(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


# --- oracles --------------------------------------------------------------------------------------


def _round_pre_quant_scales_to_fp16(model) -> None:
    """TensorRT-LLM holds the smoothing (pre-quant) factor in the model dtype, fp16; ModelOpt keeps fp32."""
    for module in model.modules():
        if getattr(module, "_pre_quant_scale", None) is not None:
            module._pre_quant_scale.data = module._pre_quant_scale.data.half().float()


def test_fp16_checkpoint_matches_hugging_face_logits_and_greedy_tokens(fp16_model, hf_model, eval_ids):
    with torch.no_grad():
        expected = hf_model(eval_ids).logits
    got = fp16_model.logits(eval_ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-3
    prompt = eval_ids[0, :12].tolist()
    with torch.no_grad():
        hf_tokens = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0
        )[0, 12:].tolist()
    assert fp16_model.generate([prompt], max_new_tokens=10) == [hf_tokens]


def test_int8_sq_checkpoint_agrees_with_modelopt_fake_quantized_model(
    tmp_path: Path, tiny_model_dir, eval_ids
):
    # The oracle pair comes from one fp32 model: calibrated in bf16 (as the calibrate stage does),
    # ModelOpt's fake quantizer and its exporter round exact weight ties differently (cosine ~0.9990).
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_tensorrt_llm_checkpoint
    from transformers import AutoModelForCausalLM

    from pipeline.calibration.recipes import recipe_for
    from pipeline.facts.config import Precision

    fake_quant = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    recipe = recipe_for(Precision.int8_sq, smoothquant_alpha=0.5, kv_cache_dtype="fp16")
    mtq.quantize(fake_quant, recipe.modelopt_cfg, forward_loop=lambda m: m(eval_ids[:, :32]))
    export_tensorrt_llm_checkpoint(
        fake_quant,
        decoder_type="llama",
        dtype=torch.float16,
        export_dir=tmp_path,
        inference_tensor_parallel=1,
    )
    _round_pre_quant_scales_to_fp16(fake_quant)
    with torch.no_grad():
        expected = fake_quant(eval_ids).logits
    got = ReferenceModel.load(tmp_path).logits(eval_ids)
    assert _min_cosine(got, expected) >= 0.9999  # measured 0.99998; without prequant scaling < 0.99


def test_int8_wo_checkpoint_agrees_with_modelopt_weight_only_model(
    tmp_path_factory, tiny_model_dir, eval_ids
):
    import modelopt.torch.quantization as mtq
    from transformers import AutoModelForCausalLM

    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo")
    assert json.loads((checkpoint / "config.json").read_text())["quantization"]["quant_algo"] == "W8A16"
    fake_quant = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    weight_only = {
        "quant_cfg": {
            "*weight_quantizer": {"num_bits": 8, "axis": 0},
            "*input_quantizer": {"enable": False},
            "*lm_head*": {"enable": False},
            "default": {"enable": False},
        },
        "algorithm": "max",
    }
    mtq.quantize(fake_quant, weight_only, forward_loop=lambda m: m(eval_ids[:1, :8]))
    with torch.no_grad():
        expected = fake_quant(eval_ids).logits
    got = ReferenceModel.load(checkpoint).logits(eval_ids)
    # ModelOpt scales by amax/127, TensorRT-LLM by amax/128: close, not identical.
    assert _min_cosine(got, expected) >= 0.999


def _fake_quantized_export(tmp_path: Path, tiny_model_dir: Path, eval_ids, preset: str):
    """A fp32 model fake-quantized by a ModelOpt preset, and its TensorRT-LLM export: one oracle pair."""
    import copy

    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_tensorrt_llm_checkpoint
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    mtq.quantize(model, copy.deepcopy(getattr(mtq, preset)), forward_loop=lambda m: m(eval_ids[:, :32]))
    export_tensorrt_llm_checkpoint(
        model, decoder_type="llama", dtype=torch.float16, export_dir=tmp_path, inference_tensor_parallel=1
    )
    return model


def test_int4_awq_checkpoint_agrees_with_modelopt_fake_quantized_model(
    tmp_path: Path, tiny_model_dir, eval_ids
):
    fake_quant = _fake_quantized_export(tmp_path, tiny_model_dir, eval_ids, "INT4_AWQ_CFG")
    assert json.loads((tmp_path / "config.json").read_text())["quantization"]["quant_algo"] == "W4A16_AWQ"
    _round_pre_quant_scales_to_fp16(fake_quant)  # the group scales too are fp16 in the engine
    with torch.no_grad():
        expected = fake_quant(eval_ids).logits
    got = ReferenceModel.load(tmp_path).logits(eval_ids)
    assert _min_cosine(got, expected) >= 0.999  # measured 0.9998; nibbles swapped: < 0.9


def test_fp8_checkpoint_agrees_with_modelopt_fake_quantized_model(tmp_path: Path, tiny_model_dir, eval_ids):
    fake_quant = _fake_quantized_export(tmp_path, tiny_model_dir, eval_ids, "FP8_DEFAULT_CFG")
    with torch.no_grad():
        expected = fake_quant(eval_ids).logits
    got = ReferenceModel.load(tmp_path).logits(eval_ids)
    # Measured 0.9988: with 3 mantissa bits, activations that sit on an E4M3 rounding boundary round
    # apart under two implementations' fp32 arithmetic; a wrong scale or layout gives far less.
    assert _min_cosine(got, expected) >= 0.998


def _effective_weight(linear) -> torch.Tensor:
    """W such that the layer computes x W^T, leaving out activation rounding."""
    if isinstance(linear, GroupwiseLinear):
        return linear._dequantized * linear._prequant[None, :]
    if isinstance(linear, Fp8Linear):
        return linear._qweight * linear.weight_scale.float()
    if isinstance(linear, SmoothQuantLinear):
        return linear._qweight * linear.weight_scale.float()[:, None] * linear._prequant[None, :]
    assert isinstance(linear, WeightOnlyLinear)
    return linear._dequantized


# Bound on the relative error of each re-derived Hugging Face weight (int8_sq measured up to 1.1%:
# smoothing moves range into the weights of down_proj; the others pass with these bounds).
REDERIVE_TOLERANCE = {"int8_sq": 0.02, "int8_wo": 0.01, "fp8": 0.05, "int4_awq": 0.15}


@pytest.mark.parametrize("precision", list(REDERIVE_TOLERANCE))
def test_hugging_face_linears_are_re_derived_from_each_exported_checkpoint(
    tmp_path_factory, tiny_model_dir, hf_model, precision
):
    model = ReferenceModel.load(tiny_checkpoint(tmp_path_factory, tiny_model_dir, precision))
    for i, layer in enumerate(model._weights.layers):
        hf = hf_model.model.layers[i]
        attn, mlp = hf.self_attn, hf.mlp
        expected = {
            "qkv": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
            "dense": attn.o_proj.weight,
            "fc": mlp.gate_proj.weight,
            "gate": mlp.up_proj.weight,
            "proj": mlp.down_proj.weight,
        }
        for name, weight in expected.items():
            got = _effective_weight(getattr(layer, name))
            error = ((got - weight).norm() / weight.norm()).item()
            assert error < REDERIVE_TOLERANCE[precision], (precision, i, name, error)


def test_int4_unpacking_inverts_modelopt_packing():
    from modelopt.torch.export.quant_utils import pack_int4_in_uint8

    values = torch.randint(-8, 8, (6, 256), generator=torch.Generator().manual_seed(0)).float()
    packed = pack_int4_in_uint8(values, torch.ones(6, 2))  # scale 1: the values themselves, 2 groups
    assert packed.shape == (3, 256)
    assert torch.equal(unpack_int4(packed.view(torch.int8)), values)


def test_fp8_rounding_is_e4m3_nearest_and_saturates():
    x = torch.tensor([0.0, 1.0, 1.0625, 1.1, -3.3, 447.0, 500.0, -1e6])
    assert round_to_fp8(x).tolist() == [0.0, 1.0, 1.0, 1.125, -3.25, 448.0, 448.0, -448.0]


# --- quantized KV caches ---------------------------------------------------------------------------


def test_int8_kv_cache_stores_rounded_keys_and_the_context_phase_reads_them_unquantized():
    cache = KVCache.empty(1, KV_CODECS["INT8"], (0.5,))
    k = torch.tensor([0.2, 0.3, 70.0, -0.74]).view(1, 1, 4, 1)
    seen_k, _ = cache.append(0, k, k)
    assert torch.equal(seen_k, k)  # no paged context FMHA with INT8 KV: the prompt's own K/V
    assert cache.keys[0].flatten().tolist() == [0.0, 0.5, 63.5, -0.5]  # x / 0.5, half to even, saturated
    new = torch.tensor([0.3]).view(1, 1, 1, 1)
    seen_k, _ = cache.append(0, new, new)
    assert seen_k.flatten().tolist() == [0.0, 0.5, 63.5, -0.5, pytest.approx(0.3)]  # past from the cache


def test_fp8_kv_cache_is_read_by_the_context_phase_too():
    cache = KVCache.empty(1, KV_CODECS["FP8"], (1.0,))
    k = torch.tensor([1.1, 500.0]).view(1, 1, 2, 1)
    seen_k, _ = cache.append(0, k, k)
    assert seen_k.flatten().tolist() == [1.125, 448.0]


def test_int8_kv_checkpoint_changes_decoding_only(tmp_path_factory, tiny_model_dir, eval_ids):
    plain = ReferenceModel.load(tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo"))
    kv_dir = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo", kv_cache_dtype="int8")
    int8_kv = ReferenceModel.load(kv_dir)
    scales = int8_kv._kv_scales
    assert all(s is not None and s > 0 for s in scales)
    assert torch.equal(int8_kv.logits(eval_ids), plain.logits(eval_ids))  # the context phase is unchanged
    prompt = [eval_ids[0, :12].tolist()]
    assert int8_kv.generate(prompt, max_new_tokens=16) == plain.generate(prompt, max_new_tokens=16)
    # A scale far too small saturates every cached value: decoding (and only decoding) breaks.
    from safetensors.torch import load_file, save_file

    broken = _copy_checkpoint(kv_dir, tmp_path_factory.mktemp("kv") / "broken")
    tensors = load_file(broken / "rank0.safetensors")
    for name in [n for n in tensors if n.endswith("cache_scaling_factor")]:
        tensors[name] = tensors[name] / 1000
    save_file(tensors, broken / "rank0.safetensors")
    bad = ReferenceModel.load(broken)
    assert torch.equal(bad.logits(eval_ids), plain.logits(eval_ids))
    assert bad.generate(prompt, max_new_tokens=16) != plain.generate(prompt, max_new_tokens=16)


def test_separate_k_and_v_scales_are_combined_as_tensorrt_llm_does(
    tmp_path_factory, tiny_model_dir, tmp_path
):
    from safetensors.torch import load_file, save_file

    source = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo", kv_cache_dtype="int8")
    target = _copy_checkpoint(source, tmp_path / "kv")
    tensors = load_file(target / "rank0.safetensors")
    tensors["transformer.layers.0.attention.k_cache_scaling_factor"] = torch.tensor([0.25])
    tensors["transformer.layers.0.attention.v_cache_scaling_factor"] = torch.tensor([0.75])
    save_file(tensors, target / "rank0.safetensors")
    assert (
        ReferenceModel.load(target)._kv_scales[0] == 0.75
    )  # max(k, v), whatever kv_cache_scaling_factor says


# --- quantization primitives -----------------------------------------------------------------------


def test_weight_only_quantization_follows_tensorrt_llm_symmetric_quantize():
    weight = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 1.0, 0.0078125, 0.01]])
    qweight, scale = quantize_weight_per_channel(weight, torch.float16)
    assert scale.dtype == torch.float16
    assert scale.tolist() == [1.0 / 128, 0.0, 2.0 / 128]  # amax / 128, per output channel
    # amax lands on 128 and saturates at 127; halves round away from zero (C round()).
    assert qweight.tolist() == [[127, -64, 32, 0], [0, 0, 0, 0], [-128, 64, 1, 1]]


def test_w8a16_prequantized_weights_give_the_same_logits_as_quantize_on_load(
    tmp_path: Path, tmp_path_factory, tiny_model_dir: Path, eval_ids
):
    from safetensors.torch import load_file, save_file

    source = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo")
    target = _copy_checkpoint(source, tmp_path / "prequantized")
    tensors = load_file(target / "rank0.safetensors")
    for name in [n for n in tensors if n.startswith("transformer.layers.") and n.endswith(".weight")]:
        if tensors[name].dim() == 2:
            tensors[name], scale = quantize_weight_per_channel(tensors[name], torch.float16)
            tensors[name.replace(".weight", ".weights_scaling_factor")] = scale
    save_file(tensors, target / "rank0.safetensors")
    expected = ReferenceModel.load(source).logits(eval_ids)
    assert torch.equal(ReferenceModel.load(target).logits(eval_ids), expected)


# --- the checkpoint config as TensorRT-LLM reads it ------------------------------------------------


def test_missing_rotary_base_falls_back_to_tensorrt_llm_default(
    tmp_path: Path, fp16_dir, fp16_model, eval_ids
):
    dropped = ReferenceModel.load(_copy_checkpoint(fp16_dir, tmp_path / "dropped", rotary_base=None))
    assert dropped.config.rotary_base == 10000.0
    assert fp16_model.config.rotary_base == 1_000_000.0
    # 10000 instead of 1e6: every position but the first rotates differently (the gate tests show the cost).
    difference = (dropped.logits(eval_ids) - fp16_model.logits(eval_ids)).abs().amax(-1)
    assert difference[:, 0].max() < 1e-4 and difference[:, 1:].min() > 1e-3


def test_norm_epsilon_is_read_from_the_checkpoint(tmp_path: Path, fp16_dir, fp16_model, eval_ids):
    changed = ReferenceModel.load(_copy_checkpoint(fp16_dir, tmp_path / "eps", norm_epsilon=1.0))
    assert changed.config.norm_epsilon == 1.0
    assert not torch.allclose(changed.logits(eval_ids), fp16_model.logits(eval_ids), atol=1e-2)


# --- batching, KV cache, sampling ------------------------------------------------------------------


def test_batched_prompts_of_different_lengths_match_one_at_a_time(fp16_model, eval_ids):
    # Lengths 3 to 30: a padded row whose positions or mask were wrong would diverge within 24 tokens.
    text = eval_ids.flatten().tolist()
    prompts = [text[:3], text[10:40], text[50:59], text[60:74]]
    batched = fp16_model.generate(prompts, max_new_tokens=24)
    assert batched == [fp16_model.generate([p], max_new_tokens=24)[0] for p in prompts]
    assert all(len(tokens) == 24 for tokens in batched)


def test_kv_cache_decoding_matches_full_recomputation(fp16_model, eval_ids):
    prompt = eval_ids[1, :10].tolist()
    sequence = list(prompt)
    for _ in range(8):
        sequence.append(int(fp16_model.logits(torch.tensor([sequence]))[0, -1].argmax()))
    assert fp16_model.generate([prompt], max_new_tokens=8) == [sequence[10:]]


def test_sampling_is_reproducible_for_a_seed_and_top_k_1_is_greedy(fp16_model, eval_ids):
    prompts = [eval_ids[0, :6].tolist(), eval_ids[1, :9].tolist()]
    kwargs = {"max_new_tokens": 12, "temperature": 1.5}
    first = fp16_model.generate(prompts, seed=3, **kwargs)
    assert fp16_model.generate(prompts, seed=3, **kwargs) == first
    assert fp16_model.generate(prompts, seed=4, **kwargs) != first
    assert fp16_model.generate(prompts, top_k=1, **kwargs) == fp16_model.generate(prompts, max_new_tokens=12)
    assert first != fp16_model.generate(prompts, max_new_tokens=12)


def test_end_id_stops_a_request_and_on_token_streams_in_order(fp16_model, eval_ids):
    prompts = [eval_ids[0, :6].tolist(), eval_ids[1, :9].tolist()]
    free = fp16_model.generate(prompts, max_new_tokens=10)
    end_id = free[0][3]
    streamed: list[tuple[int, int]] = []
    out = fp16_model.generate(
        prompts, max_new_tokens=10, end_id=end_id, on_token=lambda i, t: streamed.append((i, t))
    )
    assert out[0] == free[0][: free[0].index(end_id)]
    expected_second = free[1][: free[1].index(end_id)] if end_id in free[1] else free[1]
    assert out[1] == expected_second
    assert [t for i, t in streamed if i == 0] == out[0]
    assert [t for i, t in streamed if i == 1] == out[1]


# --- limits and bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "new_tokens", "limit"),
    [
        ([[1, 2]] * 3, 1, "max_batch_size=2"),
        ([[1] * 9], 1, "max_input_len=8"),
        ([[1] * 8], 5, "max_seq_len=12"),
    ],
)
def test_limits_refuse_requests_an_engine_would_refuse(fp16_dir, prompts, new_tokens, limit):
    model = ReferenceModel.load(
        fp16_dir, limits=EngineLimits(max_batch_size=2, max_input_len=8, max_seq_len=12)
    )
    with pytest.raises(InputError, match=limit):
        model.generate(prompts, max_new_tokens=new_tokens)


def test_logits_respects_the_input_limits(fp16_dir):
    model = ReferenceModel.load(
        fp16_dir, limits=EngineLimits(max_batch_size=2, max_input_len=8, max_seq_len=12)
    )
    assert model.logits(torch.ones(2, 8, dtype=torch.long)).shape[:2] == (2, 8)
    with pytest.raises(InputError, match="max_input_len=8"):
        model.logits(torch.ones(1, 9, dtype=torch.long))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "GPT2LMHeadModel"}, "architecture"),
        ({"rotary_scaling": {"type": "linear", "factor": 2.0}}, "rotary_scaling"),
        ({"quantization": {"quant_algo": "W4A8_AWQ"}}, "quant_algo"),
        ({"quantization": {"quant_algo": None, "kv_cache_quant_algo": "NVFP4"}}, "kv_cache_quant_algo"),
        # fp16 weights labelled W4A16_AWQ: the packed layout has half the rows
        ({"quantization": {"quant_algo": "W4A16_AWQ"}}, r"has shape \(256, 128\), expected \(128, 128\)"),
        ({"quantization": {"quant_algo": "W8A8_SQ_PER_CHANNEL"}}, "mislabelled"),
        ({"num_hidden_layers": 3}, "transformer.layers.2.input_layernorm.weight' is missing"),
    ],
)
def test_unsupported_or_inconsistent_checkpoints_are_refused(tmp_path: Path, fp16_dir, change, message):
    checkpoint = _copy_checkpoint(fp16_dir, tmp_path / "bad", **change)
    with pytest.raises(InputError, match=message):
        ReferenceModel.load(checkpoint)


def test_missing_checkpoint_is_a_clear_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="config.json: no TensorRT-LLM checkpoint config"):
        ReferenceModel.load(tmp_path)


def test_out_of_vocabulary_ids_are_refused(fp16_model):
    with pytest.raises(InputError, match="token ids"):
        fp16_model.logits(torch.tensor([[1, 99999]]))
