"""The runner API's SamplingParams as TensorRT-LLM's LLM API takes them, and back.

tensorrt_llm.SamplingParams (TensorRT-LLM 1.2.x, tensorrt_llm/sampling_params.py @ 000a01de) is a
kw_only dataclass: a keyword it has no field for is a TypeError. Its fields left None take the C++
runtime's defaults (temperature 1, top_k 0, top_p 0, min_tokens 1, length_penalty 0), and top_k None
or 1 with top_p None or 0 and no beam search is greedy (_greedy_decoding). `n` sequences are returned;
`best_of` (default n) is the beam width under use_beam_search, else the number drawn. Bad and stop
words go by token id one token each (bad_token_ids, stop_token_ids); a longer word only as text (bad,
stop), which the LLM API tokenizes itself. A stop word is cut from the output unless
include_stop_str_in_output (executor/result.py @ 005bc848, _handle_sequence). `logprobs` k asks for
each returned token's top-k log probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.core.errors import InputError
from pipeline.runtime.sampling import Penalties, SamplingParams

# tensorrt_llm.SamplingParams' constructor fields (sampling_params.py @ 000a01de), in its order.
LLM_API_SAMPLING_FIELDS = (
    "end_id", "pad_id", "max_tokens", "bad", "bad_token_ids", "stop", "stop_token_ids",
    "include_stop_str_in_output", "embedding_bias", "logits_processor", "apply_batched_logits_processor",
    "n", "best_of", "use_beam_search", "top_k", "top_p", "top_p_min", "top_p_reset_ids", "top_p_decay",
    "seed", "temperature", "min_tokens", "beam_search_diversity_rate", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "length_penalty", "early_stopping", "no_repeat_ngram_size",
    "min_p", "beam_width_array", "logprobs", "prompt_logprobs", "return_context_logits",
    "return_generation_logits", "exclude_input_from_output", "return_encoder_output",
    "return_perf_metrics", "additional_model_outputs", "lookahead_config", "guided_decoding",
    "ignore_eos", "detokenize", "add_special_tokens", "truncate_prompt_tokens", "skip_special_tokens",
    "spaces_between_special_tokens",
)  # fmt: skip


def _token_ids(name: str, words: Sequence[Sequence[int]]) -> list[int] | None:
    if not words:
        return None
    if any(len(word) != 1 for word in words):
        raise InputError(
            f"{name}: the LLM API takes words by token id one token each; a longer word goes as text"
        )
    return [int(word[0]) for word in words]


def llm_api_sampling(
    sampling: SamplingParams,
    *,
    max_new_tokens: int,
    end_id: int,
    bad_words: Sequence[Sequence[int]] = (),
    stop_words: Sequence[Sequence[int]] = (),
    log_probs: bool = False,
) -> dict[str, Any]:
    """tensorrt_llm.SamplingParams' keywords for one prompt's generation. Pure.

    Every sampling option is passed, so none is left to a C++ default that means something else here
    (top_p None is the runtime's 0, which with top_k 0 is greedy). A stop word stays in the output, as
    the runner API returns it."""
    penalties = sampling.penalties
    kwargs: dict[str, Any] = {
        "max_tokens": max_new_tokens,
        "end_id": end_id,
        "detokenize": False,
        "repetition_penalty": penalties.repetition,
        "presence_penalty": penalties.presence,
        "frequency_penalty": penalties.frequency,
        "min_tokens": penalties.min_tokens,
        "length_penalty": sampling.length_penalty,
    }
    if sampling.temperature == 0:
        kwargs["top_k"] = 1
    else:
        kwargs |= {
            "temperature": sampling.temperature,
            "top_k": sampling.top_k or None,
            "top_p": sampling.top_p or None,
            "seed": sampling.seed,
        }
    if sampling.beam_width > 1:
        kwargs |= {"use_beam_search": True, "best_of": sampling.beam_width}
    kwargs["n"] = sampling.num_return_sequences
    bad = _token_ids("bad words", bad_words)
    stop = _token_ids("stop words", stop_words)
    if bad:
        kwargs["bad_token_ids"] = bad
    if stop:
        kwargs |= {"stop_token_ids": stop, "include_stop_str_in_output": True}
    if log_probs:
        kwargs["logprobs"] = 1
    return kwargs


# The fields the CPU stand-in cannot act on, at upstream's defaults: any other value is refused. It acts
# on the rest (max_tokens, end_id, ignore_eos, temperature, top_k, top_p, seed, the penalties, min_tokens,
# length_penalty, n, best_of, bad_token_ids, stop_token_ids and the tokenizer options) and has no use
# for pad_id (padding of batched output tensors: it returns lists).
DEFAULTS: dict[str, Any] = {
    "bad": None, "stop": None, "include_stop_str_in_output": False,
    "embedding_bias": None, "logits_processor": None, "apply_batched_logits_processor": False,
    "use_beam_search": False, "top_p_min": None, "top_p_reset_ids": None, "top_p_decay": None,
    "beam_search_diversity_rate": None, "early_stopping": None, "no_repeat_ngram_size": None,
    "min_p": None, "beam_width_array": None, "logprobs": None, "prompt_logprobs": None,
    "return_context_logits": False, "return_generation_logits": False,
    "exclude_input_from_output": True, "return_encoder_output": False, "return_perf_metrics": False,
    "additional_model_outputs": None, "lookahead_config": None, "guided_decoding": None,
    "truncate_prompt_tokens": None, "spaces_between_special_tokens": True,
}  # fmt: skip


def reference_sampling(params: dict[str, Any]) -> SamplingParams:
    """The runner API's SamplingParams for tensorrt_llm.SamplingParams' keywords, for the CPU stand-in
    of the LLM (pipeline/serving/pytorch/llm.py). A keyword upstream has no field for is refused as
    upstream refuses it; one the reference runtime cannot honour is refused by name unless it holds
    upstream's default. Fields left None take the C++ runtime's defaults, except that temperature
    alone samples the whole vocabulary, as this stand-in always has."""
    unknown = sorted(set(params) - set(LLM_API_SAMPLING_FIELDS))
    if unknown:
        raise InputError(f"SamplingParams has no field {', '.join(unknown)}")
    for name, default in DEFAULTS.items():
        if name in params and params[name] != default:
            raise InputError(f"SamplingParams.{name}={params[name]!r} is not supported by the CPU stand-in")
    n = params.get("n") or 1
    best_of = params.get("best_of") or n
    if best_of != n:
        raise InputError(
            f"SamplingParams.best_of={best_of} (other than n={n}) is not supported by the CPU stand-in"
        )

    temperature = params.get("temperature")
    top_k, top_p = params.get("top_k"), params.get("top_p")
    if best_of > 1 and top_k in (None, 1) and top_p in (None, 0.0):  # SamplingParams._validate
        raise InputError(f"SamplingParams: greedy decoding in the LLM API does not allow best_of={best_of}")

    def given(name: str, default: Any) -> Any:
        value = params.get(name)
        return default if value is None else value

    greedy = (temperature is None and top_k in (None, 1) and top_p in (None, 0.0)) or temperature == 0
    return SamplingParams(
        temperature=0.0 if greedy else float(given("temperature", 1.0)),
        top_k=int(given("top_k", 0)),
        top_p=float(given("top_p", 1.0)),
        seed=int(given("seed", 0)),
        penalties=Penalties(
            repetition=float(given("repetition_penalty", 1.0)),
            presence=float(given("presence_penalty", 0.0)),
            frequency=float(given("frequency_penalty", 0.0)),
            min_tokens=int(given("min_tokens", Penalties.min_tokens)),
        ),
        length_penalty=float(given("length_penalty", SamplingParams.length_penalty)),
        num_return_sequences=int(n),
    )
