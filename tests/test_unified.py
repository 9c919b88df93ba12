"""The PyTorch backend's checkpoint: ModelOpt's unified Hugging Face export of the tiny model, the
verifier that checks it against the source model, the reference runtime reading it as TensorRT-LLM's
PyTorch backend does, and the gate (on the reference runtime, and through the LLM API) failing a
corrupted one.

Upstream read:
- nvidia-modelopt 0.37.0 as installed: modelopt/torch/export/unified_export_hf.py (export_hf_checkpoint,
  _export_hf_checkpoint, requantize_resmooth_fused_llm_layers), export/quant_utils.py
  (get_quantization_format: every 8-bit weight quantizer is "int8_sq"; to_quantized_weight;
  pack_int4_in_uint8; fuse_prequant_layernorm; preprocess_linear_fusion);
- NVIDIA/TensorRT-LLM tensorrt_llm/_torch/modules/linear.py (1.2-era stored version, newest stored @
  00bbf71e): WeightOnlyQuantLinearMethod (int8 `weight`, `weight_scale` [out] copied into the model
  dtype), W4A16_AWQ_LinearMethod (packed `weight`, `weight_scale` [out, in/group] transposed into the
  model dtype, `pre_quant_scale` only where the checkpoint has one), fused q/k/v and gate/up by
  concatenation; _torch/model_config.py ModelConfig.load_modelopt_quant_config (hf_quant_config.json's
  quant_algo, kv_cache_quant_algo, group_size, exclude_modules);
- tensorrt_llm/sampling_params.py @ 000a01de (SamplingParams: max_tokens, end_id, top_k, temperature,
  seed, detokenize, return_context_logits, prompt_logprobs; kw_only dataclass), executor/result.py
  (`context_logits`, `outputs[i].token_ids`), llmapi/llm.py (LLM.generate over a list of token-id
  prompts, one result each, in order; generate_async(streaming=True); shutdown()).
"""

from __future__ import annotations

import json
import shutil
import sys
import types
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pytest
import torch
from numerics import U32, UBF16, use_test_threads
from test_gate import (  # noqa: F401  (module fixtures, shared)
    gate_models,
    gate_settings,  # noqa: F811 (a fixture shared from another test module)
    reference,  # noqa: F811 (a fixture shared from another test module)
    tokenizer,  # noqa: F811 (a fixture shared from another test module)
)
from test_runtime import FUSED_LINEARS, SMOOTHING_ROUNDINGS, _effective_weight, _hf_linears, hf_model  # noqa: F401
from test_trtllm_pytorch import StandInLLM
from tiny_checkpoints import tiny_checkpoint

from pipeline.backends.base import EngineInfo
from pipeline.backends.reference_pytorch import load_unified_runner
from pipeline.backends.trtllm_pytorch.options import OPTIONS_FILE
from pipeline.backends.trtllm_pytorch.runner import LlmApiRunner, runner_options
from pipeline.backends.trtllm_pytorch.sampling import (
    DEFAULTS,
    LLM_API_SAMPLING_FIELDS,
    llm_api_sampling,
    reference_sampling,
)
from pipeline.calibration.unified import expected_unified_tensors, verify_unified
from pipeline.calibration.verify import CheckpointMismatchError
from pipeline.core.errors import InputError
from pipeline.facts.architecture import Architecture
from pipeline.facts.layout import HF_QUANT_CONFIG
from pipeline.gate import write_reports
from pipeline.runtime import EngineLimits, ReferenceModel
from pipeline.runtime.linear import GroupwiseLinear, WeightOnlyLinear
from pipeline.runtime.sampling import Penalties, SamplingParams
from pipeline.runtime.unified import load_unified
from pipeline.runtime.weights import build_weights

use_test_threads()
PRECISIONS = ("int8_wo", "int4_awq")
QUANT_ALGOS = {"int8_wo": "W8A16", "int4_awq": "W4A16_AWQ"}
OPTIONS = {"max_batch_size": 8, "max_num_tokens": 256, "max_input_len": 64, "max_seq_len": 96}


def unified(tmp_path_factory, tiny_model_dir, precision: str) -> Path:
    return tiny_checkpoint(tmp_path_factory, tiny_model_dir, precision, checkpoint="hf-unified")


def _engine_dir(checkpoint: Path, dest: Path, options: dict | None = None) -> Path:
    """What a PyTorch-backend build leaves in engine/: the checkpoint's files and the options."""
    shutil.copytree(checkpoint, dest)
    (dest / OPTIONS_FILE).write_text(json.dumps(options or OPTIONS))
    return dest


# --- the export and its verifier -------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_contract_the_unified_export_is_what_the_pytorch_backend_loads(
    tmp_path_factory, tiny_model_dir, precision
):
    checkpoint = unified(tmp_path_factory, tiny_model_dir, precision)
    quant = json.loads((checkpoint / HF_QUANT_CONFIG).read_text())["quantization"]
    hf = json.loads((checkpoint / "config.json").read_text())
    assert quant["quant_algo"] == hf["quantization_config"]["quant_algo"] == QUANT_ALGOS[precision]
    assert quant["exclude_modules"] == ["lm_head"] and quant["kv_cache_quant_algo"] is None
    assert (checkpoint / "tokenizer.json").is_file()  # the LLM API reads the tokenizer from the folder
    arch = Architecture.load(tiny_model_dir)
    assert verify_unified(
        checkpoint, arch, quant_algo=QUANT_ALGOS[precision], kv_cache_quant_algo=None, dtype="bfloat16"
    ) == len(expected_unified_tensors(arch, quant_algo=QUANT_ALGOS[precision], dtype="bfloat16"))
    names = set(expected_unified_tensors(arch, quant_algo=QUANT_ALGOS[precision], dtype="bfloat16"))
    prequant = {n.split(".")[-2] for n in names if n.endswith("pre_quant_scale")}
    # AWQ: only the linears that do not share their input keep a pre_quant_scale; the rest is in the norm.
    assert prequant == ({"o_proj", "down_proj"} if precision == "int4_awq" else set())


def _edit(checkpoint: Path, dest: Path, *, config=None, quant=None, tensors=None) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(checkpoint, dest)
    for name, edit in (("config.json", config), (HF_QUANT_CONFIG, quant)):
        if edit is not None:
            data = json.loads((dest / name).read_text())
            edit(data)
            (dest / name).write_text(json.dumps(data))
    if tensors is not None:
        data = load_file(dest / "model.safetensors")
        tensors(data)
        save_file(data, dest / "model.safetensors")
    return dest


BAD_EXPORTS = {
    "rope_theta dropped": ({"config": lambda c: c.pop("rope_theta")}, "rope_theta"),
    "kv heads changed": ({"config": lambda c: c.update(num_key_value_heads=2)}, "num_key_value_heads"),
    "labelled W8A8": (
        {"quant": lambda q: q["quantization"].update(quant_algo="W8A8_SQ_PER_CHANNEL")},
        "quant_algo",
    ),
    "lm_head quantized": ({"quant": lambda q: q["quantization"].update(exclude_modules=[])}, "lm_head"),
    "a scale lost": (
        {"tensors": lambda t: t.pop("model.layers.0.self_attn.q_proj.weight_scale")},
        "q_proj.weight_scale is missing",
    ),
}


@pytest.mark.parametrize("bad", BAD_EXPORTS)
def test_the_verifier_refuses_a_unified_checkpoint_that_is_not_the_model(
    tmp_path, tmp_path_factory, tiny_model_dir, bad
):
    edits, words = BAD_EXPORTS[bad]
    checkpoint = _edit(unified(tmp_path_factory, tiny_model_dir, "int8_wo"), tmp_path / "bad", **edits)
    with pytest.raises(CheckpointMismatchError) as info:
        verify_unified(
            checkpoint,
            Architecture.load(tiny_model_dir),
            quant_algo="W8A16",
            kv_cache_quant_algo=None,
            dtype="bfloat16",
        )
    assert words in " ".join(info.value.problems)


# --- the reference runtime reads it as the PyTorch backend does -------------------------------------


def _fold(model: ReferenceModel, hf, index: int, name: str) -> torch.Tensor:
    """What the export folded into the norm before a linear (AWQ's shared pre_quant_scale), per input:
    the unified norm's weight over the source model's; ones where nothing was folded."""
    layer, source = model._weights.layers[index], hf.model.layers[index]
    norms = {
        "qkv": (layer.input_norm, source.input_layernorm),
        "fc": (layer.post_norm, source.post_attention_layernorm),
    }
    norms["gate"] = norms["fc"]
    if name not in norms:
        return torch.ones(1)
    ours, theirs = norms[name]
    return ours.float() / theirs.weight.detach().float()


def _bound(linear, name: str, weight: torch.Tensor, fold: torch.Tensor) -> torch.Tensor:
    """How far each element of the effective weight (the fold included) may be from the source weight.

    The model is calibrated in bf16: the weight quantized is bf16-rounded (UBF16 |w|). W8A16: max
    calibration, step amax / 127 per output channel, nothing clips (half a step); the PyTorch backend
    holds the step in bf16 (|q| UBF16 step). W4A16 AWQ: amax / 7 per group of 128 inputs, nothing clips,
    the step held in bf16; the smoothing roundings as the engine path's (test_runtime
    SMOOTHING_ROUNDINGS), and the fold into the norm: the product rounded to bf16 and our quotient (2 UBF16).
    """
    effective = _effective_weight(linear) * fold[None, :]
    fp32 = 4 * U32 * (weight.abs() + effective.abs())
    if isinstance(linear, WeightOnlyLinear):
        step = linear.scale.float()[:, None] / (1 - UBF16)
        return step / 2 + linear.qweight.float().abs() * UBF16 * step + UBF16 * weight.abs() + fp32
    assert isinstance(linear, GroupwiseLinear)
    step = linear.group_scale.float().repeat_interleave(linear.group_size, dim=1) / (1 - UBF16)
    pre_quant = linear._prequant[None, :] * fold[None, :]
    smoothing = ((1 + UBF16) ** SMOOTHING_ROUNDINGS[name] - 1) * weight.abs()
    return (
        (step / 2 + linear.qweight.abs() * UBF16 * step) * pre_quant
        + smoothing
        + 2 * UBF16 * effective.abs()
        + fp32
    )


def _excess(model: ReferenceModel, hf) -> float:
    """The largest |effective weight - source weight| / its bound over every linear of every layer."""
    worst = 0.0
    for i, layer in enumerate(model._weights.layers):
        for name, parts in _hf_linears(hf, i).items():
            weight = torch.cat([module.weight.detach() for module, _ in parts])
            linear, fold = getattr(layer, name), _fold(model, hf, i, name)
            error = (_effective_weight(linear) * fold[None, :] - weight).abs()
            worst = max(worst, (error / _bound(linear, name, weight, fold)).max().item())
    return worst


def _runtime(checkpoint: Path) -> ReferenceModel:
    config, tensors = load_unified(checkpoint)
    return ReferenceModel(config, build_weights(tensors, config, checkpoint), None)


def swap_q_and_k(tensors: dict) -> None:
    """q/k rows mixed up by a converter: k's rows and scales exchanged with q's first ones, every layer."""
    for name in [n for n in tensors if ".self_attn.q_proj.weight" in n]:
        k_name = name.replace("q_proj", "k_proj")
        rows = tensors[k_name].shape[0]
        q, k = tensors[name].clone(), tensors[k_name].clone()
        q[:rows], k[:] = tensors[k_name], tensors[name][:rows]
        tensors[name], tensors[k_name] = q, k


def scale_by_4(tensors: dict) -> None:
    for name in [n for n in tensors if n.endswith(".weight_scale")]:
        tensors[name] = tensors[name] * 4


CORRUPTIONS = {"q and k swapped": swap_q_and_k, "scales x4": scale_by_4}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_source_linears_are_re_derived_from_the_unified_checkpoint(
    tmp_path,
    tmp_path_factory,
    tiny_model_dir,
    hf_model,  # noqa: F811 (a fixture shared from another test module)
    precision,
):
    checkpoint = unified(tmp_path_factory, tiny_model_dir, precision)
    assert _excess(_runtime(checkpoint), hf_model) <= 1
    for corruption, edit in CORRUPTIONS.items():
        bad = _edit(checkpoint, tmp_path / corruption.replace(" ", "-"), tensors=edit)
        assert _excess(_runtime(bad), hf_model) > 1, f"{corruption} passed"


# --- the gate: on the reference runtime, and through the LLM API ------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_gate_passes_a_good_unified_checkpoint_and_fails_a_corrupted_one(
    tmp_path,
    tmp_path_factory,
    tiny_model_dir,
    reference,  # noqa: F811 (a fixture shared from another test module)
    tokenizer,  # noqa: F811 (a fixture shared from another test module)
    gate_settings,  # noqa: F811 (a fixture shared from another test module)
    precision,
):
    good = _engine_dir(unified(tmp_path_factory, tiny_model_dir, precision), tmp_path / "good")

    def gate(engine_dir: Path):
        runner = load_unified_runner(engine_dir, max_batch_size=8)
        return gate_models(
            reference, runner, runner, tokenizer, gate_settings, precision=precision, limits=runner.limits
        )

    record = gate(good)
    assert record.verdict, record.summary
    for corruption, edit in CORRUPTIONS.items():
        bad = _edit(good, tmp_path / corruption.replace(" ", "-"), tensors=edit)
        record = gate(bad)
        assert not record.verdict, f"{precision}, {corruption}: {record.summary}"
        assert "perplexity_increase_pct" in {c.name for c in record.failed}


@dataclass(kw_only=True)
class StandInSamplingParams:
    """tensorrt_llm.SamplingParams (sampling_params.py @ 000a01de66f0eab4ab05640711f0253f50f5209c): its
    constructor fields, transcribed here (a kw_only dataclass: any other keyword is a TypeError), their
    defaults, __post_init__'s pad_id (end_id's when unset) and best_of (n's), and _validate's refusals (best_of below n; best_of > 1 under greedy decoding)."""

    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    bad: str | list[str] | None = None
    bad_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    embedding_bias: object = None
    logits_processor: object = None
    apply_batched_logits_processor: bool = False
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    top_p_min: float | None = None
    top_p_reset_ids: int | None = None
    top_p_decay: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    beam_search_diversity_rate: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    early_stopping: int | None = None
    no_repeat_ngram_size: int | None = None
    min_p: float | None = None
    beam_width_array: list[int] | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = True
    return_encoder_output: bool = False
    return_perf_metrics: bool = False
    additional_model_outputs: object = None
    lookahead_config: object = None
    guided_decoding: object = None
    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.pad_id is None:
            self.pad_id = self.end_id
        self.best_of = self.best_of or self.n
        if self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        if self.best_of > 1 and self.greedy_decoding:
            raise ValueError("Greedy decoding in the LLM API does not allow multiple returns.")

    @property
    def greedy_decoding(self) -> bool:  # upstream's _greedy_decoding
        top_k_greedy = self.top_k is None or self.top_k == 1
        return not self.use_beam_search and top_k_greedy and (self.top_p is None or self.top_p == 0.0)

    def given(self) -> dict:
        """The fields set away from their defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


class ReferenceLLM(StandInLLM):
    """tensorrt_llm.LLM over the reference runtime: its argument check (StandInLLM, TorchLlmArgs' fields),
    then results shaped as upstream returns them (llmapi/llm.py generate: one SamplingParams for all
    prompts or a list of one per prompt; executor/result.py @ 005bc848: `n` outputs per result, each
    with token_ids ending at the end token, which is kept, a stop token kept only under
    include_stop_str_in_output, and logprobs one {token: Logprob} per token); the reference runtime,
    reading the fields as pipeline.serving.pytorch.llm's stand-in does, stands for the GPU kernels."""

    def __init__(self, model: str, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.runner = load_unified_runner(Path(model), max_batch_size=kwargs["max_batch_size"])

    def _run(self, prompt, params: StandInSamplingParams):
        assert isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
        # what the runtime's kernels act on; the rest is the result's shaping, done below
        shaping = ("detokenize", "logprobs", "include_stop_str_in_output", "best_of")
        sampling = reference_sampling({k: v for k, v in params.given().items() if k not in shaping})
        probs: list[list[float]] = []
        rows = self.runner.generate(
            [prompt],
            max_new_tokens=params.max_tokens,
            sampling=sampling,
            bad_words=[[[t] for t in params.bad_token_ids]] if params.bad_token_ids else (),
            log_probs=probs,
        )
        outputs = []
        for tokens, row_probs in zip(rows, probs, strict=True):
            if params.end_id in tokens:
                tokens = tokens[: tokens.index(params.end_id) + 1]  # upstream keeps the end token
            for i, token in enumerate(tokens):
                if token in (params.stop_token_ids or []):
                    tokens = tokens[: i + int(params.include_stop_str_in_output)]
                    break
            logprobs = [
                {t: types.SimpleNamespace(logprob=p)}
                for t, p in zip(tokens, row_probs[: len(tokens)], strict=True)
            ]
            outputs.append(
                types.SimpleNamespace(token_ids=tokens, logprobs=logprobs if params.logprobs else [])
            )
        return outputs

    def generate(self, prompts, params):
        every = params if isinstance(params, list) else [params] * len(prompts)
        logits = (
            self.runner.context_logits(prompts) if every[0].return_context_logits else [None] * len(prompts)
        )
        results = []
        for prompt, prompt_params, prompt_logits in zip(prompts, every, logits, strict=True):
            if prompt_logits is not None:  # the gate's logits call: its one new token is not read
                results.append(types.SimpleNamespace(context_logits=prompt_logits.float(), outputs=[]))
            else:
                results.append(
                    types.SimpleNamespace(context_logits=None, outputs=self._run(prompt, prompt_params))
                )
        return results

    def generate_async(self, prompt, params, streaming=False):
        """executor/result.py GenerationResult @ 005bc848893f575ec14b45d6b13139360d67c790: iterating it
        (__iter__/__next__) yields the same result after each step, its outputs growing a token a step."""
        assert streaming
        outputs = self._run(prompt, params)
        for k in range(1, max(len(o.token_ids) for o in outputs) + 1):
            yield types.SimpleNamespace(
                outputs=[
                    types.SimpleNamespace(token_ids=o.token_ids[:k], logprobs=o.logprobs[:k]) for o in outputs
                ]
            )


@pytest.fixture
def llm_api(monkeypatch):
    module = types.ModuleType("tensorrt_llm")
    module.LLM, module.SamplingParams, module.__version__ = ReferenceLLM, StandInSamplingParams, "1.2.1"
    monkeypatch.setitem(sys.modules, "tensorrt_llm", module)
    StandInLLM.loaded = []
    return module


def test_contract_the_gate_through_the_llm_api_fails_a_corrupted_unified_checkpoint(
    tmp_path,
    tmp_path_factory,
    tiny_model_dir,
    reference,  # noqa: F811 (a fixture shared from another test module)
    tokenizer,  # noqa: F811 (a fixture shared from another test module)
    gate_settings,  # noqa: F811 (a fixture shared from another test module)
    llm_api,
):
    info = EngineInfo(backend="trtllm-pytorch", target="a100-40gb")
    built = {**OPTIONS, "cuda_graph_config": {"batch_sizes": [1, 2, 4, 8, 16], "enable_padding": True}}
    good = _engine_dir(
        unified(tmp_path_factory, tiny_model_dir, "int8_wo"),
        tmp_path / "good",
        {**built, "max_batch_size": 16},
    )

    def gate(engine_dir: Path):
        runner = LlmApiRunner.load(engine_dir, info, max_batch_size=8)
        return runner, gate_models(
            reference, runner, runner, tokenizer, gate_settings, precision="int8_wo", limits=runner.limits
        )

    runner, record = gate(good)
    # The gate's batch, and the CUDA graphs captured for it, not the profile's.
    (loaded,) = StandInLLM.loaded
    assert loaded.args.max_batch_size == 8 and loaded.args.cuda_graph_config.batch_sizes == [1, 2, 4, 8]
    assert runner.limits == EngineLimits(8, 64, 96)
    assert record.verdict, record.summary
    bad = _edit(good, tmp_path / "bad", tensors=swap_q_and_k)
    _, record = gate(bad)
    assert not record.verdict
    (tmp_path / "report").mkdir()
    write_reports(tmp_path / "report", record)
    root = ET.parse(tmp_path / "report" / "junit.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert int(suite.get("failures")) == len(record.failed) > 0


def test_contract_the_llm_api_sampling_fields_are_upstreams():
    """The names the runner and the CPU stand-in use are tensorrt_llm.SamplingParams' own, and each
    field the stand-in cannot act on is refused away from upstream's default, not from another."""
    upstream = {f.name: f.default for f in fields(StandInSamplingParams)}
    assert list(LLM_API_SAMPLING_FIELDS) == list(upstream)
    assert {name: upstream[name] for name in DEFAULTS} == DEFAULTS


def test_contract_the_runner_maps_every_sampling_option_onto_upstreams_fields():
    sampling = SamplingParams(
        temperature=0.7, top_k=5, top_p=0.9, seed=11, length_penalty=0.5, num_return_sequences=2,
        penalties=Penalties(repetition=1.3, presence=0.2, frequency=0.1, min_tokens=3),
    )  # fmt: skip
    words = {"bad_words": [[7], [9]], "stop_words": [[4]]}
    # a name upstream has no field for would be a TypeError here
    params = StandInSamplingParams(
        **llm_api_sampling(sampling, max_new_tokens=6, end_id=2, log_probs=True, **words)
    )
    assert params.given() == {
        "end_id": 2, "max_tokens": 6, "detokenize": False, "temperature": 0.7, "top_k": 5, "top_p": 0.9,
        "seed": 11, "repetition_penalty": 1.3, "presence_penalty": 0.2, "frequency_penalty": 0.1,
        "min_tokens": 3, "length_penalty": 0.5, "n": 2, "best_of": 2, "bad_token_ids": [7, 9],
        "stop_token_ids": [4], "include_stop_str_in_output": True, "logprobs": 1, "pad_id": 2,
    }  # fmt: skip
    greedy = StandInSamplingParams(**llm_api_sampling(SamplingParams(), max_new_tokens=6, end_id=2))
    assert greedy.greedy_decoding and greedy.min_tokens == 1 and greedy.n == 1
    # top_p 0 is the runtime's own default (None), which with top_k 0 is greedy, as regularizeTopKTopP has it
    assert StandInSamplingParams(
        **llm_api_sampling(SamplingParams(temperature=1.0, top_p=0.0), max_new_tokens=6, end_id=2)
    ).greedy_decoding
    beams = llm_api_sampling(SamplingParams(beam_width=4, num_return_sequences=2), max_new_tokens=6, end_id=2)
    beam = StandInSamplingParams(**beams)
    assert (beam.use_beam_search, beam.best_of, beam.n) == (True, 4, 2)
    with pytest.raises(InputError, match="stop words: the LLM API takes words by token id one token each"):
        llm_api_sampling(SamplingParams(), max_new_tokens=6, end_id=2, stop_words=[[4, 5]])


def test_the_llm_api_runner_samples_stops_and_scores_as_the_reference_runtime(
    tmp_path, tmp_path_factory, tiny_model_dir, llm_api
):
    """Through the LLM API, the runner's rows are the reference runtime's own for the same options:
    n sampled rows per prompt, a stop word returned, greedy log probabilities."""
    engine_dir = _engine_dir(unified(tmp_path_factory, tiny_model_dir, "int8_wo"), tmp_path / "e", OPTIONS)
    runner = LlmApiRunner.load(
        engine_dir, EngineInfo(backend="trtllm-pytorch", target="a100-40gb"), max_batch_size=4
    )
    cpu = load_unified_runner(engine_dir, max_batch_size=4)
    prompts = [[1, 5, 9, 13], [1, 7, 3]]
    sampling = SamplingParams(temperature=0.9, top_k=8, seed=5, num_return_sequences=2)
    sampled = runner.generate(prompts, max_new_tokens=6, sampling=sampling)
    assert len(sampled) == 4
    assert sampled == [row for p in prompts for row in cpu.generate([p], max_new_tokens=6, sampling=sampling)]
    assert sampled != runner.generate(prompts, max_new_tokens=6, sampling=replace(sampling, seed=6))
    free = cpu.generate(prompts, max_new_tokens=6)
    stop = [[[free[0][2]]], [[free[1][1]]]]
    assert runner.generate(prompts, max_new_tokens=6, stop_words=stop) == [free[0][:3], free[1][:2]]
    streamed: list[tuple[int, int]] = []
    got, want = [], []
    assert (
        runner.generate(
            prompts, max_new_tokens=6, log_probs=got, on_token=lambda r, t: streamed.append((r, t))
        )
        == free
    )
    cpu.generate(prompts, max_new_tokens=6, log_probs=want)
    assert got == want and len(streamed) == 12
    with pytest.raises(InputError, match="refuses these options: Greedy decoding"):
        runner.generate(prompts, max_new_tokens=6, sampling=SamplingParams(num_return_sequences=2))


def test_runner_options_lower_the_batch_and_its_cuda_graphs_only():
    options = {
        **OPTIONS,
        "max_batch_size": 64,
        "cuda_graph_config": {"batch_sizes": [1, 2, 4, 8, 16, 32, 64], "enable_padding": True},
    }
    lowered = runner_options(options, EngineLimits(6, 64, 96))
    assert lowered == {
        **options,
        "max_batch_size": 6,
        "cuda_graph_config": {"batch_sizes": [1, 2, 4, 6], "enable_padding": True},
    }


def test_bench_times_a_pytorch_build_through_the_llm_api(tmp_path, tmp_path_factory, tiny_model_dir, llm_api):
    """On a GPU, bench's harness drives trtllm-pytorch's runner: batch 1 streamed through
    generate_async(streaming=True), batches through LLM.generate; every figure names the LLM API."""
    from pipeline.backends import BACKENDS
    from pipeline.bench.harness import IN_PROCESS_HARNESS, measure_engine
    from pipeline.bench.workload import BenchSettings, plan_workload
    from pipeline.core.reporter import RecordingReporter

    engine_dir = _engine_dir(unified(tmp_path_factory, tiny_model_dir, "int8_wo"), tmp_path / "engine")
    runner = LlmApiRunner.load(
        engine_dir, EngineInfo(backend="trtllm-pytorch", target="a100-40gb"), max_batch_size=None
    )
    runtime = BACKENDS["trtllm-pytorch"].bench_runtime()
    assert "LLM API (PyTorch backend)" in runtime
    settings = BenchSettings(input_len=16, output_len=4, latency_runs=1, throughput_runs=1, batch_sizes=(2,))
    timings = measure_engine(
        runner,
        plan_workload(runner.limits, settings),
        seed=0,
        reporter=RecordingReporter(),
        label="trtllm-pytorch/int8_wo/x",
        runtime=runtime,
    )
    assert timings.latency.itl.count == 3  # every streamed token timed: 4 tokens, 3 gaps
    (point,) = timings.throughput
    assert point.output_tokens == 2 * 4  # no early stop through end_id NO_END_ID
    assert timings.latency.measured_by == point.measured_by == f"{IN_PROCESS_HARNESS} over {runtime}"
