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
from pipeline.serving.client import generate, generate_stream
from pipeline.serving.repository import TOKENIZER_SUBDIR

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
        ("ensemble", "num_return_sequences", 0),
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
