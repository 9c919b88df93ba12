"""The CPU reference runtime against its oracles: the Hugging Face model (fp16), TensorRT-LLM's
weight-only quantization of it (int8_wo) and ModelOpt's fake-quantized model (int8_sq, int4_awq, fp8),
the Hugging Face linears re-derived from each exported checkpoint, quantized KV caches, plus batching,
sampling, limits and bad input. Every numeric bound is derived from the formats' rounding and the
tensors at hand (tests/numerics.py), never measured on one machine.

Semantics checked against TensorRT-LLM v1.2.1: quantization/layers.py (Int8SmoothQuantLinear,
WeightOnlyQuantLinear), quantization/quantize.py (quantize_layers, exclude list),
models/llama/config.py (rotary_base default 10000.0), cutlass_preprocessors.cpp (symmetric_quantize);
and the nearest stored 1.2.x files: models/modeling_utils.py @ 27712aa7 (preprocess_perlayer_weights:
W4A16_AWQ weights transposed and read as quint4x2, group scales transposed and cast to the model dtype,
pre_quant_scale reshaped to [1, in]; FP8 int8-viewed weights as float8_e4m3fn; process_kv_scaling_factor:
kv_cache_scaling_factor = max(k, v), its reciprocal written into the cache), quantization/functional.py
(weight_only_groupwise_quant_matmul's non-plugin path), builder.py @ 008b2b8d (paged context FMHA off
with an INT8 KV cache). ModelOpt 0.37: torch/export/quant_utils.py pack_int4_in_uint8,
preprocess_linear_fusion (fused linears' shared amax and mean pre-quant scale) and to_quantized_weight
(weight / scale in fp32, then the cast); torch/quantization/tensor_quant.py (_fp8_eager: x * (448 /
amax), the cast, times its reciprocal; _tensor_quant: round(x * maxbound / amax) clipped to +-maxbound),
model_calib.py (apply_pre_quant_scale_and_smooth: the smoothed weight and the pre-quant scale in the
weight's dtype).
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from numerics import (
    U16,
    U32,
    UBF16,
    decided_steps,
    e4m3_spacing,
    fp16_rounding_bound,
    gamma,
    logit_rounding_bound,
    off_grid_disagreements,
    use_test_threads,
)
from tiny_checkpoints import tiny_checkpoint

from pipeline.core.errors import InputError
from pipeline.runtime import EngineLimits, ReferenceModel
from pipeline.runtime.kvcache import KV_CODECS, KVCache
from pipeline.runtime.linear import (
    Fp8Linear,
    GroupwiseLinear,
    SmoothQuantLinear,
    WeightOnlyLinear,
    quantize_per_tensor,
    quantize_weight_per_channel,
    round_to_fp8,
    unpack_int4,
)
from pipeline.runtime.sampling import SamplingParams
from pipeline.serving.models.textcodec import stop_position

use_test_threads()


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
#
# Each oracle rounds the way the engine does, so a comparison is exact up to the order of fp32 sums
# and, where activations are quantized, ties; the bounds come from tests/numerics.py (the formats'
# rounding and the tensors at hand), none from one machine's arithmetic.

# Two fp32 implementations of one rescaling (x / s against x * (1 / s), with s itself rounded once
# on each side) are at most four roundings apart: 5 u leaves the second-order terms room.
SCALING_ROUNDING = 5 * U32

# runtime linear -> (Hugging Face block, the modules fused into it, in row order)
FUSED_LINEARS = {
    "qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "dense": ("self_attn", ("o_proj",)),
    "fc": ("mlp", ("gate_proj",)),
    "gate": ("mlp", ("up_proj",)),
    "proj": ("mlp", ("down_proj",)),
}


def _hf_linears(hf_model, index: int) -> dict[str, list[tuple[torch.nn.Module, slice]]]:
    """Runtime linear name -> the Hugging Face (or ModelOpt) modules of decoder layer `index` it fuses,
    each with its rows in the runtime's weight."""
    layer = hf_model.model.layers[index]
    linears = {}
    for name, (block, parts) in FUSED_LINEARS.items():
        start, modules = 0, []
        for part in parts:
            module = getattr(getattr(layer, block), part)
            modules.append((module, slice(start, start + module.weight.shape[0])))
            start += module.weight.shape[0]
        linears[name] = modules
    return linears


def _rounded_to_fp16(hf_model):
    """The Hugging Face model with every tensor rounded as an fp16 checkpoint stores it."""
    model = copy.deepcopy(hf_model)
    for parameter in model.parameters():
        parameter.data = parameter.data.half().float()
    return model


def _assert_within(got: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> None:
    worst = ((got - expected).abs() / bound).max().item()
    assert worst <= 1, f"a logit is off by {worst:.3g} times its bound"


def _decided_steps_along(logits_of, oracle, prompt: list[int], tokens: list[int]) -> int:
    """How many leading steps of a greedy continuation `tokens` of `prompt` no correct fp32 evaluation
    (another implementation, batch, padding, or the KV cache instead of recomputation) can change: the
    logits along it from logits_of (one forward pass), every evaluation within 2 x logit_rounding_bound
    (computed on the oracle, the fp32 Hugging Face model) of them."""
    sequence = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = logits_of(sequence)[0, len(prompt) - 1 : -1]
    bound = 2 * logit_rounding_bound(oracle, sequence)[0, len(prompt) - 1 : -1]
    return decided_steps(logits, bound)


def _round_pre_quant_scales_to_fp16(model) -> None:
    """TensorRT-LLM holds the smoothing (pre-quant) factor in the model dtype, fp16; ModelOpt keeps fp32."""
    for module in model.modules():
        if getattr(module, "_pre_quant_scale", None) is not None:
            module._pre_quant_scale.data = module._pre_quant_scale.data.half().float()


def test_fp16_checkpoint_matches_hugging_face_logits_and_greedy_tokens(fp16_model, hf_model, eval_ids):
    # The checkpoint holds the weights in fp16: the oracle is the Hugging Face model rounded the same
    # way (exactly the runtime's weights), so the two differ only in the order of their fp32 sums.
    oracle = _rounded_to_fp16(hf_model)
    for i, layer in enumerate(fp16_model._weights.layers):
        for name, parts in _hf_linears(oracle, i).items():
            weight = getattr(layer, name).weight
            assert all(torch.equal(weight[rows], module.weight) for module, rows in parts), (i, name)
    with torch.no_grad():
        expected = oracle(eval_ids).logits
    got = fp16_model.logits(eval_ids)
    assert got.shape == expected.shape
    _assert_within(got, expected, 2 * logit_rounding_bound(oracle, eval_ids))  # two fp32 implementations
    prompt = eval_ids[0, :12].tolist()
    with torch.no_grad():
        hf_tokens = oracle.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0
        )[0, 12:].tolist()
    # past a near tie either token is right
    decided = _decided_steps_along(lambda ids: oracle(ids).logits, oracle, prompt, hf_tokens)
    assert fp16_model.generate([prompt], max_new_tokens=10)[0][:decided] == hf_tokens[:decided]


def _tensorrt_llm_weight_only(weight: torch.Tensor) -> torch.Tensor:
    """What a W8A16 engine multiplies by, written out apart from pipeline.runtime: symmetric_quantize
    (cutlass_preprocessors.cpp) of the fp16 weight, per output row scale = amax / 128 in fp32 and
    q = C round(w / scale) clipped to int8, times the scale as stored (fp16)."""
    scale = weight.abs().amax(dim=1, keepdim=True) / 128
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    ratio = weight / safe
    q = (torch.sign(ratio) * torch.floor(ratio.abs() + 0.5)).clamp(-128, 127)
    return q * scale.half().float()


def test_int8_wo_checkpoint_matches_tensorrt_llm_weight_only_quantization(
    tmp_path_factory, tiny_model_dir, hf_model, eval_ids
):
    # The checkpoint holds fp16 weights labelled W8A16 and TensorRT-LLM quantizes them when it builds
    # (ModelOpt's weight-only fake quantizer would scale by amax / 127, another grid). The oracle applies
    # that quantization to the Hugging Face model: the same weights bit for bit, so only the order of
    # the fp32 sums differs.
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo")
    assert json.loads((checkpoint / "config.json").read_text())["quantization"]["quant_algo"] == "W8A16"
    model = ReferenceModel.load(checkpoint)
    oracle = _rounded_to_fp16(hf_model)
    for i, layer in enumerate(model._weights.layers):
        for name, parts in _hf_linears(oracle, i).items():
            for module, rows in parts:
                module.weight.data = _tensorrt_llm_weight_only(module.weight.data)
                assert torch.equal(getattr(layer, name)._dequantized[rows], module.weight), (i, name)
    with torch.no_grad():
        expected = oracle(eval_ids).logits
    _assert_within(model.logits(eval_ids), expected, 2 * logit_rounding_bound(oracle, eval_ids))


def _fake_quantized_export(tmp_path: Path, tiny_model_dir: Path, eval_ids, preset: str):
    """A fp32 model fake-quantized by a ModelOpt preset, and its TensorRT-LLM export: one oracle pair.

    The export works on the model in place (export/quant_utils.py preprocess_linear_fusion): fused
    linears (qkv, gate/up) share one weight amax, one activation amax and their mean pre-quant scale
    afterwards, so the fake-quantized model then computes what the export describes.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_tensorrt_llm_checkpoint
    from transformers import AutoModelForCausalLM

    from pipeline.calibration.recipes import recipe_for

    tmp_path.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    if preset == "int8_sq":  # as the calibrate stage configures it
        config = recipe_for("int8_sq", smoothquant_alpha=0.5, kv_cache_dtype="fp16").modelopt_cfg
    else:
        config = copy.deepcopy(getattr(mtq, preset))
    mtq.quantize(model, config, forward_loop=lambda m: m(eval_ids[:, :32]))
    export_tensorrt_llm_checkpoint(
        model, decoder_type="llama", dtype=torch.float16, export_dir=tmp_path, inference_tensor_parallel=1
    )
    _round_pre_quant_scales_to_fp16(model)
    return model


@dataclass
class _Agreement:
    problems: list[str]  # disagreements with the oracle beyond what rounding explains
    ties: int  # activations and weights rounded to neighbouring grid points (a tie, or int8's -128)
    deviation: float  # ||runtime - oracle logits||_F
    bound: float


def _linear_inputs(model, eval_ids) -> dict[torch.nn.Module, torch.Tensor]:
    """The input each quantized linear of the fake-quantized model sees on eval_ids."""
    seen: dict[torch.nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, args[0].detach()))
        for m in model.modules()
        if hasattr(m, "input_quantizer") and hasattr(m, "weight_quantizer")  # ModelOpt's quantized linears
    ]
    try:
        with torch.no_grad():
            model(eval_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _against_modelopt_linear(linear, rows: slice, module, x: torch.Tensor, where: str):
    """One runtime linear (its `rows`) against ModelOpt's quantized linear on the same input.

    Returns (problems, ties, the runtime's dequantized weight rows). The runtime's activation and weight
    codes (on its own scales) must be ModelOpt's codes (on ModelOpt's scales, amax / maxbound) but at
    ties, and but int8's -128, which TensorRT's Q layer uses and ModelOpt's narrow range does not; the
    outputs must then differ by what those measured differences and both sides' fp32 sums explain.
    """
    iq, wq = module.input_quantizer, module.weight_quantizer
    with torch.no_grad():
        fq_x = iq(x)  # the pre-quant scale, then ModelOpt's activation rounding
        fq_w = wq(module.weight)
        fq_y = module(x)
        y = linear(x)[..., rows]
    problems = []
    clipped = torch.zeros_like(x, dtype=torch.bool)
    if isinstance(linear, SmoothQuantLinear | Fp8Linear):
        modelopt_s_a, modelopt_s_w = iq.amax.float() / iq.maxbound, wq.amax.float() / wq.maxbound
    if isinstance(linear, SmoothQuantLinear):
        s_a, s_w = linear.activation_scale.float(), linear.weight_scale.float()[rows, None]
        smoothed = x * linear._prequant
        exact_x, codes_x = smoothed / s_a, quantize_per_tensor(smoothed, s_a)
        oracle_x = torch.round(fq_x / modelopt_s_a)
        step_x = torch.ones_like(exact_x)
        clipped = (codes_x == -128) & (oracle_x == -127) & (exact_x <= -127.5 * (1 - SCALING_ROUNDING))
        exact_w, codes_w = module.weight / s_w, linear._qweight[rows]
        oracle_w = torch.round(fq_w / modelopt_s_w.view(-1, 1))
        step_w = torch.ones_like(exact_w)
        rt_x, rt_w = codes_x * s_a, codes_w * s_w
    elif isinstance(linear, Fp8Linear):
        s_a, s_w = linear._act_scale, linear.weight_scale.float()
        exact_x, codes_x, oracle_x = x / s_a, round_to_fp8(x / s_a), round_to_fp8(fq_x / modelopt_s_a)
        step_x = e4m3_spacing(torch.minimum(codes_x.abs(), oracle_x.abs()))
        exact_w, codes_w = module.weight / s_w, linear._qweight[rows]
        oracle_w = round_to_fp8(fq_w / modelopt_s_w)
        step_w = e4m3_spacing(torch.minimum(codes_w.abs(), oracle_w.abs()))
        rt_x, rt_w = codes_x * s_a, codes_w * s_w
    else:
        assert isinstance(linear, GroupwiseLinear)
        # No activation quantization: the input is only scaled, by ModelOpt's factor as the engine holds it.
        if not torch.equal(linear._prequant, iq.pre_quant_scale):
            problems.append(f"{where}: pre-quant scale is not ModelOpt's")
        exact_x = codes_x = oracle_x = step_x = rt_x = x * linear._prequant
        modelopt_scale = wq.amax.float().view(fq_w.shape[0], -1) / wq.maxbound
        # TensorRT-LLM casts the group scales to the model dtype (fp16).
        if not torch.equal(linear.group_scale[rows].float(), modelopt_scale.half().float()):
            problems.append(f"{where}: group scales are not ModelOpt's in fp16")
        s_w = modelopt_scale.repeat_interleave(linear.group_size, dim=1)
        exact_w, codes_w, oracle_w = module.weight / s_w, linear.qweight[rows], torch.round(fq_w / s_w)
        step_w = torch.ones_like(exact_w)
        rt_w = linear._dequantized[rows]
    if not isinstance(linear, GroupwiseLinear):  # (group scales: compared above)
        for kind, scale, modelopt_scale in (("activation", s_a, modelopt_s_a), ("weight", s_w, modelopt_s_w)):
            if not ((scale - modelopt_scale.view_as(scale)).abs() <= SCALING_ROUNDING * scale).all():
                problems.append(f"{where}: {kind} scale is not ModelOpt's amax / maxbound")
    off_grid_x = off_grid_disagreements(codes_x, oracle_x, exact_x, step_x, SCALING_ROUNDING) & ~clipped
    off_grid_w = off_grid_disagreements(codes_w, oracle_w, exact_w, step_w, SCALING_ROUNDING)
    for kind, bad in (("activations", off_grid_x), ("weights", off_grid_w)):
        if bad.any():
            problems.append(f"{where}: {int(bad.sum())} {kind} off ModelOpt's grid point, not at a tie")
    ties = int((codes_x != oracle_x).sum() + (codes_w != oracle_w).sum())
    # y - fq_y = (rt_x - fq_x) rt_w^T + fq_x (rt_w - fq_w)^T exactly, plus each side's rounding: a sum of
    # K products and the output scaling (K + 2 roundings) on the runtime's side, K on ModelOpt's.
    k = x.shape[-1]
    bound = (
        (rt_x - fq_x).abs() @ rt_w.abs().T
        + fq_x.abs() @ (rt_w - fq_w).abs().T
        + gamma(k + 2) * (rt_x.abs() @ rt_w.abs().T + fq_x.abs() @ fq_w.abs().T)
    )
    if not ((y - fq_y).abs() <= bound).all():
        problems.append(
            f"{where}: output off by {((y - fq_y).abs() / bound).max().item():.3g} times its bound"
        )
    return problems, ties, rt_w


def _agreement_with_modelopt(checkpoint: Path, fake_quant, eval_ids) -> _Agreement:
    """The exported checkpoint on the runtime against ModelOpt's fake-quantized model it came from.

    Per linear, on the inputs ModelOpt's model sees: codes and outputs as _against_modelopt_linear.
    The whole model: the oracle is ModelOpt's model with the runtime's dequantized weights (ModelOpt's
    but at the ties counted above, and with the engine's fp16 group scales), its activation rounding
    kept. The two differ by the fp32 sums, 2 x logit_rounding_bound, and, where activations are
    quantized, by the activations that land on the other side of a tie once those sums moved them:
    each such flip moves an activation by one step, at most twice the oracle's own rounding error
    there, so to first order the flips move the logits by at most twice as much as the oracle's
    activation rounding does (the oracle with its activations left unrounded): every activation
    flipping is the worst case. A flip early in the network moves later activations by far more than
    the sums do and sets off more flips (a relative 1e-5 nudge to the embeddings does it to this model;
    another CPU's summation order can, the likely reason the 0.998 cosine floor this replaces failed on
    one); at worst the two roundings are then independent, and two independent roundings of the same
    values differ by sqrt(2) times one's error, within the bound. The per-linear checks are the tight
    ones.
    """
    model = ReferenceModel.load(checkpoint)
    inputs = _linear_inputs(fake_quant, eval_ids)
    oracle = copy.deepcopy(fake_quant)
    problems, ties = [], 0
    for i, layer in enumerate(model._weights.layers):
        oracle_linears = _hf_linears(oracle, i)
        for name, parts in _hf_linears(fake_quant, i).items():
            for (module, rows), (oracle_module, _) in zip(parts, oracle_linears[name], strict=True):
                found, tied, weight = _against_modelopt_linear(
                    getattr(layer, name), rows, module, inputs[module], f"layer {i} {name}[{rows.start}:]"
                )
                problems += found
                ties += tied
                oracle_module.weight.data = weight
                oracle_module.weight_quantizer.disable()
    with torch.no_grad():
        expected = oracle(eval_ids).logits
    bound = (2 * logit_rounding_bound(oracle, eval_ids)).norm().item()
    quantizers = [m.input_quantizer for m in oracle.modules() if hasattr(m, "input_quantizer")]
    if any(q.is_enabled for q in quantizers):
        unrounded = copy.deepcopy(oracle)
        for m in unrounded.modules():
            if hasattr(m, "input_quantizer"):
                m.input_quantizer.disable()  # a disabled quantizer still applies the pre-quant scale
        with torch.no_grad():
            bound += 2 * (expected - unrounded(eval_ids).logits).norm().item()
    deviation = (model.logits(eval_ids) - expected).norm().item()
    if not deviation <= bound:
        problems.append(f"logits off by {deviation:.4g} (Frobenius), bound {bound:.4g}")
    return _Agreement(problems=problems, ties=ties, deviation=deviation, bound=bound)


def _rewrite_tensors(src: Path, dst: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "rank0.safetensors")
    change(tensors)
    save_file(tensors, dst / "rank0.safetensors")
    return dst


def _scale_by_4(suffix: str):
    def change(tensors: dict) -> None:
        for name in [n for n in tensors if n.endswith(suffix)]:
            tensors[name] = tensors[name] * 4

    return change


def _swap_qkv_row_pairs(tensors: dict) -> None:
    """A converter that interleaves rows: rows 2j and 2j+1 of every fused qkv weight exchanged."""
    for name in [n for n in tensors if n.endswith("attention.qkv.weight")]:
        weight = tensors[name]
        tensors[name] = weight.view(-1, 2, weight.shape[1]).flip(1).reshape(weight.shape).contiguous()


def _swap_int4_nibbles(tensors: dict) -> None:
    for name in [n for n in tensors if n.endswith(".weight") and tensors[n].dtype == torch.int8]:
        byte = tensors[name].to(torch.int16) & 0xFF
        tensors[name] = (((byte & 0x0F) << 4) | (byte >> 4)).to(torch.uint8).view(torch.int8)


def _drop_pre_quant_scaling(tensors: dict) -> None:
    for name in [n for n in tensors if n.endswith("prequant_scaling_factor")]:
        tensors[name] = torch.ones_like(tensors[name])


# Export bugs each format can have; every bound of the tests below must reject them.
BROKEN_EXPORTS = {
    "weight scales x4": _scale_by_4("weights_scaling_factor"),
    "activation scales x4": _scale_by_4("activation_scaling_factor"),
    "qkv rows swapped in pairs": _swap_qkv_row_pairs,
    "int4 nibbles swapped": _swap_int4_nibbles,
    "pre-quant scaling missing": _drop_pre_quant_scaling,
}
BREAKS = {
    "int8_wo": ["qkv rows swapped in pairs"],
    "int8_sq": [
        "weight scales x4",
        "activation scales x4",
        "qkv rows swapped in pairs",
        "pre-quant scaling missing",
    ],
    "int4_awq": [
        "weight scales x4",
        "qkv rows swapped in pairs",
        "int4 nibbles swapped",
        "pre-quant scaling missing",
    ],
    "fp8": ["weight scales x4", "activation scales x4", "qkv rows swapped in pairs"],
}


@pytest.mark.parametrize(
    ("precision", "preset", "quant_algo"),
    [
        ("int8_sq", "int8_sq", "W8A8_SQ_PER_CHANNEL"),
        ("int4_awq", "INT4_AWQ_CFG", "W4A16_AWQ"),
        ("fp8", "FP8_DEFAULT_CFG", "FP8"),
    ],
)
def test_checkpoint_agrees_with_the_modelopt_fake_quantized_model_it_came_from(
    tmp_path: Path, tiny_model_dir, eval_ids, precision, preset, quant_algo
):
    fake_quant = _fake_quantized_export(tmp_path / "good", tiny_model_dir, eval_ids, preset)
    assert (
        json.loads((tmp_path / "good" / "config.json").read_text())["quantization"]["quant_algo"]
        == quant_algo
    )
    agreement = _agreement_with_modelopt(tmp_path / "good", fake_quant, eval_ids)
    assert not agreement.problems, agreement
    # The same bounds reject each export bug this format can have.
    for broken in BREAKS[precision]:
        bad = _rewrite_tensors(tmp_path / "good", tmp_path / broken.replace(" ", "-"), BROKEN_EXPORTS[broken])
        assert _agreement_with_modelopt(bad, fake_quant, eval_ids).problems, f"{broken} passed"


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


# The calibrate stage holds the model in bf16 (calibration/export.py choose_placement). ModelOpt 0.37
# smooths a linear (SmoothQuant, AWQ) by rounding W / pq to bf16 and keeping pq itself in bf16
# (quantization/model_calib.py apply_pre_quant_scale_and_smooth): two bf16 roundings between the Hugging
# Face weight and what gets quantized. The export resmooths fused linears (qkv, gate/up) to their mean pq
# with a bf16 product and a bf16 quotient (export/quant_utils.py preprocess_linear_fusion): two more.
SMOOTHING_ROUNDINGS = {"qkv": 4, "fc": 4, "gate": 4, "dense": 2, "proj": 2}


def _rederivation_bound(linear, name: str, weight: torch.Tensor) -> torch.Tensor:
    """How far each element of a linear's effective weight may be from the Hugging Face weight."""
    fp32 = 4 * U32 * (weight.abs() + _effective_weight(linear).abs())  # the scalings: 2 roundings a side
    if isinstance(linear, WeightOnlyLinear):
        # symmetric_quantize of the fp16 weight: half a step, or a whole one where amax (w / s = 128)
        # clips to 127; the engine multiplies back by the step as stored, fp16.
        step = linear.scale.float()[:, None] / (1 - U16)  # the fp32 step, at most this
        q = linear.qweight.float()
        half_step = torch.where(q == 127, 1.0, 0.5) * step
        return half_step + q.abs() * U16 * step + fp16_rounding_bound(weight) + fp32
    if isinstance(linear, Fp8Linear):
        # Unsmoothed bf16 weights, one scale per tensor: half the E4M3 spacing at the stored value.
        return e4m3_spacing(linear._qweight) / 2 * linear.weight_scale.float() + fp32
    smoothing = ((1 + UBF16) ** SMOOTHING_ROUNDINGS[name] - 1 + U16) * weight.abs()  # + pq stored in fp16
    pre_quant = linear._prequant[None, :]
    if isinstance(linear, SmoothQuantLinear):
        # ModelOpt's narrow range: amax / 127 per output channel, nothing clips.
        return linear.weight_scale.float()[:, None] / 2 * pre_quant + smoothing + fp32
    assert isinstance(linear, GroupwiseLinear)
    # amax / 7 per group of 128 inputs, nothing clips; the engine holds the scales in fp16.
    step = linear.group_scale.float().repeat_interleave(linear.group_size, dim=1) / (1 - U16)
    return (step / 2 + linear.qweight.abs() * U16 * step) * pre_quant + smoothing + fp32


def _rederivation_excess(model: ReferenceModel, hf_model) -> float:
    """The largest |effective weight - Hugging Face weight| / its bound over every linear of every layer."""
    worst = 0.0
    for i, layer in enumerate(model._weights.layers):
        for name, parts in _hf_linears(hf_model, i).items():
            weight = torch.cat([module.weight.detach() for module, _ in parts])
            linear = getattr(layer, name)
            error = (_effective_weight(linear) - weight).abs()
            worst = max(worst, (error / _rederivation_bound(linear, name, weight)).max().item())
    return worst


@pytest.mark.parametrize("precision", ["int8_sq", "int8_wo", "fp8", "int4_awq"])
def test_hugging_face_linears_are_re_derived_from_each_exported_checkpoint(
    tmp_path: Path, tmp_path_factory, tiny_model_dir, hf_model, precision
):
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_model_dir, precision)
    assert _rederivation_excess(ReferenceModel.load(checkpoint), hf_model) <= 1
    for broken in BREAKS[precision]:
        if broken == "activation scales x4":
            continue  # not in the weights
        bad = _rewrite_tensors(checkpoint, tmp_path / broken.replace(" ", "-"), BROKEN_EXPORTS[broken])
        assert _rederivation_excess(ReferenceModel.load(bad), hf_model) > 1, f"{broken} passed"


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
    # the past from the cache, the new key itself unquantized (float32's 0.3)
    assert seen_k.flatten().tolist() == [0.0, 0.5, 63.5, -0.5, torch.tensor(0.3).item()]


def test_fp8_kv_cache_is_read_by_the_context_phase_too():
    cache = KVCache.empty(1, KV_CODECS["FP8"], (1.0,))
    k = torch.tensor([1.1, 500.0]).view(1, 1, 2, 1)
    seen_k, _ = cache.append(0, k, k)
    assert seen_k.flatten().tolist() == [1.125, 448.0]


def _step_logits(model: ReferenceModel, prompt: list[int], tokens: list[int], monkeypatch) -> torch.Tensor:
    """The logits generate() chooses each of `tokens` from [len(tokens), vocab], fed those tokens
    (teacher forcing through the engine's path: the context phase, then decoding steps on the KV cache)."""
    seen, fed = [], iter(tokens)

    class Fed:
        def __init__(self, _sampling) -> None:
            pass

        def next_tokens(self, logits: torch.Tensor, *_counts, **_step) -> tuple[torch.Tensor, torch.Tensor]:
            seen.append(logits[0].clone())
            return torch.tensor([next(fed)]), torch.zeros(1)

    with monkeypatch.context() as patch:
        patch.setattr("pipeline.runtime.model.TokenSampler", Fed)
        model.generate([prompt], max_new_tokens=len(tokens))
    return torch.stack(seen)


def test_int8_kv_checkpoint_changes_decoding_only(tmp_path_factory, tiny_model_dir, eval_ids, monkeypatch):
    plain = ReferenceModel.load(tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo"))
    kv_dir = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo", kv_cache_dtype="int8")
    int8_kv = ReferenceModel.load(kv_dir)
    scales = int8_kv._kv_scales
    assert all(s is not None and s > 0 for s in scales)
    assert torch.equal(int8_kv.logits(eval_ids), plain.logits(eval_ids))  # the context phase is unchanged
    prompt = [eval_ids[0, :12].tolist()]
    expected = plain.generate(prompt, max_new_tokens=16)[0]
    plain_steps = _step_logits(plain, prompt[0], expected, monkeypatch)
    int8_steps = _step_logits(int8_kv, prompt[0], expected, monkeypatch)
    assert torch.equal(int8_steps[0], plain_steps[0])  # the first token: the context phase
    assert not torch.equal(int8_steps[1:], plain_steps[1:])  # decoding reads the rounded cache
    # Its greedy tokens are the plain ones wherever the logit change the cache causes at that step
    # (measured along the same tokens) cannot reorder the top logit; at a nearer tie either is right.
    decided = decided_steps(plain_steps, (int8_steps - plain_steps).abs())
    assert int8_kv.generate(prompt, max_new_tokens=16)[0][:decided] == expected[:decided]
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
    tmp_path: Path, fp16_dir, fp16_model, hf_model, eval_ids
):
    dropped = ReferenceModel.load(_copy_checkpoint(fp16_dir, tmp_path / "dropped", rotary_base=None))
    assert dropped.config.rotary_base == 10000.0
    assert fp16_model.config.rotary_base == 1_000_000.0
    # 10000 instead of 1e6: every position but the first rotates differently (the gate tests show the cost).
    # Position 0 rotates by angle 0 whatever the base, so its logits are the same computation, bit for bit;
    # every later one moves further than fp32 rounding could move it.
    difference = (dropped.logits(eval_ids) - fp16_model.logits(eval_ids)).abs().amax(-1)
    rounding = 2 * logit_rounding_bound(_rounded_to_fp16(hf_model), eval_ids).amax(-1)
    assert difference[:, 0].max() == 0 and (difference[:, 1:] > rounding[:, 1:]).all()


def test_norm_epsilon_is_read_from_the_checkpoint(tmp_path: Path, fp16_dir, fp16_model, hf_model, eval_ids):
    changed = ReferenceModel.load(_copy_checkpoint(fp16_dir, tmp_path / "eps", norm_epsilon=1.0))
    assert changed.config.norm_epsilon == 1.0
    difference = (changed.logits(eval_ids) - fp16_model.logits(eval_ids)).abs()
    assert (difference > 2 * logit_rounding_bound(_rounded_to_fp16(hf_model), eval_ids)).any()  # not rounding


# --- batching, KV cache, sampling ------------------------------------------------------------------


def test_batched_prompts_of_different_lengths_match_one_at_a_time(fp16_model, hf_model, eval_ids):
    # Lengths 3 to 30: a padded row whose positions or mask were wrong would diverge within 24 tokens.
    text = eval_ids.flatten().tolist()
    prompts = [text[:3], text[10:40], text[50:59], text[60:74]]
    batched = fp16_model.generate(prompts, max_new_tokens=24)
    assert all(len(tokens) == 24 for tokens in batched)
    oracle = _rounded_to_fp16(hf_model)
    for prompt, tokens in zip(prompts, batched, strict=True):
        alone = fp16_model.generate([prompt], max_new_tokens=24)[0]
        decided = _decided_steps_along(fp16_model.logits, oracle, prompt, alone)  # up to a near tie
        assert tokens[:decided] == alone[:decided]


def test_kv_cache_decoding_matches_full_recomputation(fp16_model, hf_model, eval_ids):
    prompt = eval_ids[1, :10].tolist()
    sequence = list(prompt)
    for _ in range(8):
        sequence.append(int(fp16_model.logits(torch.tensor([sequence]))[0, -1].argmax()))
    oracle = _rounded_to_fp16(hf_model)
    decided = _decided_steps_along(fp16_model.logits, oracle, prompt, sequence[10:])  # up to a near tie
    assert fp16_model.generate([prompt], max_new_tokens=8)[0][:decided] == sequence[10:][:decided]


def test_sampling_is_reproducible_for_a_seed_and_top_k_1_is_greedy(fp16_model, eval_ids):
    prompts = [eval_ids[0, :6].tolist(), eval_ids[1, :9].tolist()]

    def sampled(**options) -> list[list[int]]:
        return fp16_model.generate(
            prompts, max_new_tokens=12, sampling=SamplingParams(temperature=1.5, **options)
        )

    first = sampled(seed=3)
    assert sampled(seed=3) == first
    assert sampled(seed=4) != first
    assert sampled(top_k=1) == fp16_model.generate(prompts, max_new_tokens=12)
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


def test_a_stop_word_ends_its_row_and_is_returned(fp16_model, eval_ids):
    """A row stops once it completes a stop word of its prompt, the word included (the served model
    cuts there too: textcodec.stop_position); the other prompt's words do not stop it."""
    prompts = [eval_ids[0, :6].tolist(), eval_ids[1, :9].tolist()]
    free = fp16_model.generate(prompts, max_new_tokens=10)
    word = free[0][2:4]
    out = fp16_model.generate(prompts, max_new_tokens=10, stop_words=[[word], [[free[1][-1] + 1, 0]]])
    assert out[0] == free[0][: stop_position(free[0], [word])] and out[1] == free[1]


def test_returned_sequences_are_rows_of_their_prompt_drawn_together(fp16_model, eval_ids):
    prompts = [eval_ids[0, :6].tolist(), eval_ids[1, :9].tolist()]
    sampling = SamplingParams(temperature=1.5, seed=3)
    log_probs: list[list[float]] = []
    rows = fp16_model.generate(
        prompts,
        max_new_tokens=8,
        sampling=SamplingParams(temperature=1.5, seed=3, num_return_sequences=2),
        log_probs=log_probs,
    )
    repeated = [p for p in prompts for _ in range(2)]
    assert rows == fp16_model.generate(repeated, max_new_tokens=8, sampling=sampling)
    assert len(log_probs) == 4 and [len(lp) for lp in log_probs] == [len(r) for r in rows]
    assert rows[0] != rows[1]  # samples, not one answer twice (fixed by the seed)


def test_beam_search_is_refused_and_returned_sequences_count_against_the_batch(fp16_dir):
    model = ReferenceModel.load(
        fp16_dir, limits=EngineLimits(max_batch_size=2, max_input_len=8, max_seq_len=12)
    )
    with pytest.raises(InputError, match="no beam search"):
        model.generate([[1, 2]], max_new_tokens=1, sampling=SamplingParams(beam_width=2))
    with pytest.raises(InputError, match="max_batch_size=2"):
        model.generate([[1, 2]], max_new_tokens=1, sampling=SamplingParams(num_return_sequences=3))


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
