"""A client written for the TensorRT-LLM backend's ensemble and BLS model gets the same answer from ours:
every input they declare (tests/data/tensorrtllm_backend_interface.json) may be sent at its neutral value,
over HTTP /generate, /generate_stream and a gRPC stream alike; a feature the reference runtime lacks,
asked for, is a 400 naming the input.

Shares test_smoke's server (its module-scoped fixtures), so the model loads once per module.
"""

# ruff: noqa: F811 (test_smoke's module-scoped fixtures, imported to share its server setup, are arguments here)
from __future__ import annotations

import numpy as np
import pytest
from test_smoke import MAX_TOKENS, expected, grpc_stream, prompts, published, server  # noqa: F401
from transformers import AutoTokenizer

from pipeline.core.errors import StageError
from pipeline.runtime.sampling import Penalties, SamplingParams
from pipeline.serving.client import generate, generate_stream
from pipeline.serving.repository import TOKENIZER_SUBDIR
from pipeline.serving.smoke import reference_answers

# Each input at the value that leaves the answer as greedy decoding gives it. top_k 1 with top_p 0 is
# greedy whatever the temperature (1.0, the upstream default).
NEUTRAL = {
    "decoder_text_input": "",
    "num_return_sequences": 1,
    "bad_words": [""],
    "stop_words": [""],
    "exclude_input_in_output": True,
    "top_k": 1,
    "top_p": 0.0,
    "temperature": 1.0,
    "length_penalty": 1.0,
    "repetition_penalty": 1.0,
    "min_tokens": 0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": 0,
    "return_log_probs": False,
    "return_context_logits": False,
    "return_generation_logits": False,
    "return_perf_metrics": False,
    "return_num_input_tokens": False,
    "return_num_output_tokens": False,
    "beam_width": 1,
    "prompt_table_extra_id": 0,
    "prompt_vocab_size": 0,
    "embedding_bias_words": [""],
    "embedding_bias_weights": [0.0],
    "lora_task_id": 0,
    "guided_decoding_guide_type": "",
    "guided_decoding_guide": "",
}
BLS_NEUTRAL = {"image_url_input": "", "num_draft_tokens": 0, "use_draft_logits": False}


@pytest.fixture(scope="module")
def token_ids(published):
    tokenizer = AutoTokenizer.from_pretrained(published[2] / TOKENIZER_SUBDIR)
    return {"end_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id or tokenizer.eos_token_id}


def neutral_payload(model: str, prompt: str, token_ids: dict, *, stream: bool) -> dict:
    extra = BLS_NEUTRAL if model == "tensorrt_llm_bls" else {}
    return {"text_input": prompt, "max_tokens": MAX_TOKENS, "stream": stream, **NEUTRAL, **extra, **token_ids}


def test_the_neutral_values_cover_every_upstream_client_input():
    from test_upstream_interface import upstream

    for model, extra in (("ensemble", {}), ("tensorrt_llm_bls", BLS_NEUTRAL)):
        names = {name for name, *_ in upstream(model, "inputs")}
        sent = {"text_input", "max_tokens", "stream", "end_id", "pad_id", *NEUTRAL, *extra}
        # tensors of two or more dims (prompt table, LoRA weights, images) JSON cannot send: the gRPC test
        assert names - sent == {"prompt_embedding_table", "lora_weights", "lora_config"} | (
            {"image_input", "image_bytes_input", "video_bytes_input"} if extra else set()
        )


@pytest.mark.triton
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_every_input_at_its_neutral_value_gives_the_greedy_answer_over_http(
    server, prompts, expected, token_ids, model
):
    whole = generate(server.url, model, neutral_payload(model, prompts[0], token_ids, stream=False))
    assert whole["text_output"] == expected[0]
    events = generate_stream(server.url, model, neutral_payload(model, prompts[0], token_ids, stream=True))
    assert "".join(e["text_output"] for e in events if "text_output" in e) == expected[0]


def _grpc_inputs(payload: dict, extra_tensors: dict):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    dtypes = {bool: np.bool_, int: np.int32, float: np.float32, str: np.object_}
    wide = {"seed", "lora_task_id", "prompt_table_extra_id"}  # TYPE_UINT64 upstream
    inputs = []
    for name, value in payload.items():
        values = value if isinstance(value, list) else [value]
        dtype = np.uint64 if name in wide else dtypes[type(values[0])]
        array = np.array([[v.encode() if isinstance(v, str) else v for v in values]], dtype=dtype)
        inputs.append(grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
        inputs[-1].set_data_from_numpy(array)
    for name, array in extra_tensors.items():
        inputs.append(grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
        inputs[-1].set_data_from_numpy(array)
    return inputs


@pytest.mark.triton
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_every_input_at_its_neutral_value_gives_the_same_answer_over_grpc(
    server, prompts, expected, token_ids, model
):
    """HTTP and gRPC give the same answer; over gRPC even the prompt table and LoRA tensors go, empty."""
    import tritonclient.grpc as grpcclient

    empty = {
        "prompt_embedding_table": np.zeros((1, 0, 0), dtype=np.float16),
        "lora_weights": np.zeros((1, 0, 0), dtype=np.float16),
        "lora_config": np.zeros((1, 0, 3), dtype=np.int32),
    }
    if model == "tensorrt_llm_bls":
        empty["image_bytes_input"] = np.zeros((1, 0, 0, 0, 0), dtype=np.uint8)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    for stream in (False, True):
        payload = neutral_payload(model, prompts[0], token_ids, stream=stream)
        responses = grpc_stream(client, model, _grpc_inputs(payload, empty))
        assert "".join(r["text_output"].reshape(-1)[0].decode() for r in responses) == expected[0]


@pytest.mark.triton
@pytest.mark.parametrize(
    "model, name, value",
    [
        ("ensemble", "beam_width", 2),
        ("ensemble", "lora_task_id", 5),
        ("ensemble", "return_context_logits", True),
        ("ensemble", "guided_decoding_guide_type", "json"),
        ("ensemble", "decoder_text_input", "an encoder prompt"),
        ("ensemble", "embedding_bias_words", ["library"]),
        ("tensorrt_llm_bls", "beam_width", 2),
        ("tensorrt_llm_bls", "image_url_input", "http://example.com/a.png"),
        ("tensorrt_llm_bls", "num_draft_tokens", 4),
    ],
)
def test_a_feature_the_reference_runtime_lacks_is_a_400_naming_the_input(server, prompts, model, name, value):
    with pytest.raises(StageError, match=rf"HTTP 400: .*input '{name}'.* is not supported"):
        generate(server.url, model, {"text_input": prompts[0], "max_tokens": 2, name: value})


@pytest.mark.triton
def test_exclude_input_in_output_false_returns_the_prompt_too(server, prompts, expected):
    """The backend's per-request input (utils.h InputFieldsNames::excludeInputFromOutput) overrides the
    model's parameter."""
    payload = {"text_input": prompts[0], "max_tokens": MAX_TOKENS, "exclude_input_in_output": False}
    got = generate(server.url, "ensemble", payload)["text_output"]
    assert got.endswith(expected[0]) and len(got) > len(expected[0])
    assert prompts[0].split()[0] in got


PENALTY_FIELDS = {
    "repetition_penalty": "repetition",
    "presence_penalty": "presence",
    "frequency_penalty": "frequency",
}


@pytest.mark.triton
@pytest.mark.parametrize(
    "model, name, value",
    [
        ("ensemble", "repetition_penalty", 3.0),
        ("ensemble", "presence_penalty", 100.0),
        ("ensemble", "frequency_penalty", 100.0),
        ("tensorrt_llm_bls", "repetition_penalty", 3.0),
    ],
)
def test_penalties_and_min_tokens_reach_the_runtime(server, published, prompts, model, name, value):
    """Greedy (no top_k or top_p, temperature 1: TensorRT-LLM's defaults) with a penalty and min_tokens:
    the served answer is the reference runtime's with the same penalties (penaltyKernels.cu
    batchApplyPenalty, NVIDIA/TensorRT-LLM 249d93d551e8ec11d6d62aabfc9ca8df41ead84c; test_sampling.py
    pins the arithmetic). Each value is one that changes this tiny model's greedy answer (asserted), so
    an input that does not reach the runtime fails the test."""
    penalties = Penalties(**{PENALTY_FIELDS[name]: value}, min_tokens=MAX_TOKENS)
    greedy = SamplingParams(temperature=1.0, top_k=1, penalties=penalties)
    want = reference_answers(published[2], prompts[:1], MAX_TOKENS, sampling=greedy)[0]
    assert want != reference_answers(published[2], prompts[:1], MAX_TOKENS)[0]
    payload = {"text_input": prompts[0], "max_tokens": MAX_TOKENS, name: value, "min_tokens": MAX_TOKENS}
    assert generate(server.url, model, payload)["text_output"] == want


@pytest.mark.triton
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_top_p_reaches_the_runtime(server, published, prompts, model):
    """top_k 0 with top_p 0.5 is nucleus sampling (samplingTopKKernels.h regularizeTopKTopP, TensorRT-LLM
    e41b05cdc69021efb4116ed5f32eeb1840a47981): the reference runtime's answer for the same seed."""
    sampling = {"temperature": 1.5, "seed": 7}
    nucleus = SamplingParams(top_p=0.5, **sampling)
    want = reference_answers(published[2], prompts[:1], MAX_TOKENS, sampling=nucleus)[0]
    whole = SamplingParams(top_p=1.0, **sampling)
    assert want != reference_answers(published[2], prompts[:1], MAX_TOKENS, sampling=whole)[0]
    payload = {"text_input": prompts[0], "max_tokens": MAX_TOKENS, "top_p": 0.5, **sampling}
    assert generate(server.url, model, payload)["text_output"] == want


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_length_penalty_at_one_beam_leaves_the_answer_as_it_is(server, prompts, expected, protocol):
    """At beam_width 1 TensorRT-LLM decodes with its sampling layer, which never reads the length
    penalty (layers/decodingLayer.cpp, NVIDIA/TensorRT-LLM 03961722f65265573cad179baca3bc5fe8c03f76): any
    value the executor's SamplingConfig takes (>= 0, samplingConfig.cpp checkLengthPenalty, 3585984b)
    gives the greedy answer, over HTTP and gRPC alike; a negative one is refused naming the input."""
    import tritonclient.grpc as grpcclient

    def answer(value: float) -> str:
        payload = {"text_input": prompts[0], "max_tokens": MAX_TOKENS, "length_penalty": value}
        if protocol == "http":
            return generate(server.url, "ensemble", payload)["text_output"]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        (response,) = grpc_stream(client, "ensemble", _grpc_inputs(payload, {}))
        return response["text_output"].reshape(-1)[0].decode()

    assert answer(0.5) == answer(2.0) == answer(0.0) == expected[0]
    with pytest.raises(Exception, match="length_penalty must be >= 0"):
        answer(-1.0)


@pytest.mark.triton
def test_without_top_k_or_top_p_the_answer_is_greedy_whatever_the_temperature(server, prompts, expected):
    """TensorRT-LLM's defaults top_k 0 and top_p 0 together mean greedy (regularizeTopKTopP, above)."""
    payload = {"text_input": prompts[0], "max_tokens": MAX_TOKENS, "temperature": 1.5, "seed": 7}
    assert generate(server.url, "ensemble", payload)["text_output"] == expected[0]


@pytest.mark.triton
def test_a_bad_word_is_never_generated(server, published, prompts, expected):
    """A bad word's last token is banned wherever the sequence ends with the rest of it (banBadWords.cu
    ban_bad_words, TensorRT-LLM 23bc5b7c490576071a021d6fcfc32c5808db36a2): the greedy answer's first
    token as a word, banned, changes the answer to the reference runtime's with that word banned."""
    tokenizer = AutoTokenizer.from_pretrained(published[2] / TOKENIZER_SUBDIR)
    word = reference_answers(published[2], prompts[:1], 1)[0]  # the first token's text, its space included
    ids = tokenizer.encode(word, add_special_tokens=False)  # as preprocessing encodes a word list
    want = reference_answers(published[2], prompts[:1], MAX_TOKENS, bad_words=[ids])[0]
    assert want != expected[0]
    payload = {"text_input": prompts[0], "max_tokens": MAX_TOKENS, "bad_words": [word]}
    assert generate(server.url, "ensemble", payload)["text_output"] == want


@pytest.mark.triton
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_http_and_grpc_give_the_same_sampled_answer_and_log_probs(server, published, prompts, model):
    """One request with sampling, penalties and return_log_probs, sent over HTTP /generate and over a
    gRPC stream: the same text, the same log probabilities. output_log_probs [1, len] and cum_log_probs
    [1] per response (the backend's config.pbtxt dims [-1, -1] and [-1]: per beam, one beam here), the
    chosen tokens' log softmax over the whole vocabulary (samplingTopKKernels.cu topKStage2Sampling,
    TensorRT-LLM 03961722f65265573cad179baca3bc5fe8c03f76), their sum the cumulative one."""
    import tritonclient.grpc as grpcclient

    payload = {
        "text_input": prompts[0],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.8,
        "top_k": 20,
        "top_p": 0.9,
        "seed": 11,
        "repetition_penalty": 1.2,
        "return_log_probs": True,
    }
    over_http = generate(server.url, model, payload)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    (over_grpc,) = grpc_stream(client, model, _grpc_inputs(payload, {}))
    assert over_grpc["text_output"].reshape(-1)[0].decode() == over_http["text_output"]
    log_probs = np.asarray(over_http["output_log_probs"], dtype=np.float32).reshape(-1)
    assert 1 <= log_probs.size <= MAX_TOKENS and (log_probs <= 0).all()
    assert over_grpc["output_log_probs"].shape == (1, 1, log_probs.size)  # [batch, beam, tokens]
    assert over_grpc["cum_log_probs"].shape == (1, 1)  # [batch, beam]
    assert np.array_equal(over_grpc["output_log_probs"].reshape(-1), log_probs)
    # cum_log_probs is the float64 sum cast to float32, checked against the float32 sum of the float32
    # terms: each of the n terms and n additions rounds by at most 2^-24 of the total (all terms share
    # a sign), and the final cast once more
    total = float(over_grpc["cum_log_probs"].reshape(-1)[0])
    assert total == float(np.asarray(over_http["cum_log_probs"], dtype=np.float32).reshape(-1)[0])
    assert total == pytest.approx(float(log_probs.sum()), rel=(2 * log_probs.size + 1) * 2.0**-24)
    want = reference_answers(
        published[2],
        prompts[:1],
        MAX_TOKENS,
        sampling=SamplingParams(
            temperature=0.8, top_k=20, top_p=0.9, seed=11, penalties=Penalties(repetition=1.2)
        ),
    )[0]
    assert over_http["text_output"] == want


@pytest.mark.triton
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_several_returned_sequences_are_samples_each_in_its_own_response(server, published, prompts, model):
    """num_return_sequences 3 at beam_width 1: three responses of one sequence each, told apart by
    sequence_index [1, 1] (model_instance_state.cc fillTritonResponse, NVIDIA/TensorRT-LLM
    c8c6df08bd0ead54cd47f7973e1e425c28a174cd, sends it only when more than one sequence is asked for),
    each an independent sample of the prompt: the reference runtime's three rows for that seed."""
    import tritonclient.grpc as grpcclient

    sampling = {"temperature": 1.0, "top_k": 50, "seed": 5}
    payload = {"text_input": prompts[0], "max_tokens": MAX_TOKENS, "num_return_sequences": 3, **sampling}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    responses = grpc_stream(client, model, _grpc_inputs(payload, {}))
    assert len(responses) == 3 and all(r["sequence_index"].shape == (1, 1) for r in responses)
    by_index = {
        int(r["sequence_index"].reshape(-1)[0]): r["text_output"].reshape(-1)[0].decode() for r in responses
    }
    drawn = SamplingParams(num_return_sequences=3, **sampling)
    want = reference_answers(published[2], prompts[:1], MAX_TOKENS, sampling=drawn)
    assert [by_index.get(i) for i in range(3)] == want
    assert len(set(want)) > 1  # samples, not one answer thrice (fixed by the seed)
    (one,) = grpc_stream(client, model, _grpc_inputs({**payload, "num_return_sequences": 1}, {}))
    assert "sequence_index" not in one


@pytest.mark.triton
def test_zero_returned_sequences_is_a_400_naming_the_input(server, prompts):
    """The executor refuses it too (cpp/tensorrt_llm/executor/samplingConfig.cpp checkNumReturnSequences:
    numReturnSequences > 0; NVIDIA/TensorRT-LLM da93909436f0ef7cf4bdce7600554dc7b2fe3a0e)."""
    with pytest.raises(StageError, match=r"HTTP 400: .*input 'num_return_sequences' is 0"):
        generate(
            server.url, "ensemble", {"text_input": prompts[0], "max_tokens": 2, "num_return_sequences": 0}
        )
