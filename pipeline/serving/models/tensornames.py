"""The names of every Triton tensor a published repository declares, and how the models wire them.

The config templates (pipeline/serving/templates/*/config.pbtxt) spell these names literally, so
each template reads as the whole interface of its model; tests/test_publish.py checks every name
they declare, and the ensemble's wiring, against this module. The Python models read their names
here (this file is copied next to each model.py: self-contained), and so do the HTTP clients
(smoke, bench).
"""

from __future__ import annotations

# A request of several prompts (decoupled only) gets one response per prompt, in completion order:
# this output names the prompt each answers. The engine's name, passed on as it is by the ensemble
# and the BLS model.
BATCH_INDEX = "batch_index"


class Text:
    """The ensemble's and the BLS model's interface: what a client sends and gets (/generate's JSON keys).

    The names of the TensorRT-LLM backend's own ensemble and BLS model, so their clients work with ours.
    """

    TEXT_INPUT = "text_input"
    MAX_TOKENS = "max_tokens"
    BAD_WORDS = "bad_words"
    STOP_WORDS = "stop_words"
    END_ID = "end_id"
    PAD_ID = "pad_id"
    TOP_K = "top_k"
    TOP_P = "top_p"
    TEMPERATURE = "temperature"
    LENGTH_PENALTY = "length_penalty"
    REPETITION_PENALTY = "repetition_penalty"
    MIN_TOKENS = "min_tokens"
    PRESENCE_PENALTY = "presence_penalty"
    FREQUENCY_PENALTY = "frequency_penalty"
    SEED = "seed"
    BEAM_WIDTH = "beam_width"
    STREAM = "stream"

    TEXT_OUTPUT = "text_output"
    BATCH_INDEX = BATCH_INDEX

    ENSEMBLE_INPUTS = (
        TEXT_INPUT,
        MAX_TOKENS,
        BAD_WORDS,
        STOP_WORDS,
        END_ID,
        PAD_ID,
        TOP_K,
        TOP_P,
        TEMPERATURE,
        LENGTH_PENALTY,
        REPETITION_PENALTY,
        MIN_TOKENS,
        PRESENCE_PENALTY,
        FREQUENCY_PENALTY,
        SEED,
        BEAM_WIDTH,
        STREAM,
    )
    # The BLS model passes on only the sampling options the reference runtime implements.
    BLS_INPUTS = (
        TEXT_INPUT,
        MAX_TOKENS,
        BAD_WORDS,
        STOP_WORDS,
        END_ID,
        PAD_ID,
        TOP_K,
        TOP_P,
        TEMPERATURE,
        SEED,
        STREAM,
    )
    OUTPUTS = (TEXT_OUTPUT, BATCH_INDEX)


class Preprocessing:
    """The preprocessing model: prompt text and word lists in, token ids out."""

    QUERY = "QUERY"
    REQUEST_OUTPUT_LEN = "REQUEST_OUTPUT_LEN"
    BAD_WORDS_DICT = "BAD_WORDS_DICT"
    STOP_WORDS_DICT = "STOP_WORDS_DICT"
    END_ID = "END_ID"
    PAD_ID = "PAD_ID"

    INPUT_ID = "INPUT_ID"
    REQUEST_INPUT_LEN = "REQUEST_INPUT_LEN"
    BAD_WORDS_IDS = "BAD_WORDS_IDS"
    STOP_WORDS_IDS = "STOP_WORDS_IDS"
    OUT_END_ID = "OUT_END_ID"
    OUT_PAD_ID = "OUT_PAD_ID"

    INPUTS = (QUERY, REQUEST_OUTPUT_LEN, BAD_WORDS_DICT, STOP_WORDS_DICT, END_ID, PAD_ID)
    OUTPUTS = (
        INPUT_ID,
        REQUEST_INPUT_LEN,
        REQUEST_OUTPUT_LEN,
        BAD_WORDS_IDS,
        STOP_WORDS_IDS,
        OUT_END_ID,
        OUT_PAD_ID,
    )


class Engine:
    """The tensorrt_llm model: the TensorRT-LLM backend's names (utils.h InputFieldsNames,
    OutputFieldsNames), which the reference stand-in answers to as well."""

    INPUT_IDS = "input_ids"
    INPUT_LENGTHS = "input_lengths"
    REQUEST_OUTPUT_LEN = "request_output_len"
    END_ID = "end_id"
    PAD_ID = "pad_id"
    STOP_WORDS_LIST = "stop_words_list"
    BAD_WORDS_LIST = "bad_words_list"
    BEAM_WIDTH = "beam_width"
    TEMPERATURE = "temperature"
    RUNTIME_TOP_K = "runtime_top_k"
    RUNTIME_TOP_P = "runtime_top_p"
    LEN_PENALTY = "len_penalty"
    REPETITION_PENALTY = "repetition_penalty"
    MIN_TOKENS = "min_tokens"
    PRESENCE_PENALTY = "presence_penalty"
    FREQUENCY_PENALTY = "frequency_penalty"
    SEED = "seed"
    RETURN_LOG_PROBS = "return_log_probs"
    STREAMING = "streaming"
    STOP = "stop"  # a request naming another's request id ends that generation
    ENCODER_INPUT_FEATURES = "encoder_input_features"

    OUTPUT_IDS = "output_ids"
    SEQUENCE_LENGTH = "sequence_length"
    CUM_LOG_PROBS = "cum_log_probs"
    OUTPUT_LOG_PROBS = "output_log_probs"
    CONTEXT_LOGITS = "context_logits"
    GENERATION_LOGITS = "generation_logits"
    BATCH_INDEX = BATCH_INDEX

    INPUTS = (
        INPUT_IDS,
        INPUT_LENGTHS,
        REQUEST_OUTPUT_LEN,
        END_ID,
        PAD_ID,
        STOP_WORDS_LIST,
        BAD_WORDS_LIST,
        BEAM_WIDTH,
        TEMPERATURE,
        RUNTIME_TOP_K,
        RUNTIME_TOP_P,
        LEN_PENALTY,
        REPETITION_PENALTY,
        MIN_TOKENS,
        PRESENCE_PENALTY,
        FREQUENCY_PENALTY,
        SEED,
        RETURN_LOG_PROBS,
        STREAMING,
        STOP,
        ENCODER_INPUT_FEATURES,
    )
    OUTPUTS = (
        OUTPUT_IDS,
        SEQUENCE_LENGTH,
        CUM_LOG_PROBS,
        OUTPUT_LOG_PROBS,
        CONTEXT_LOGITS,
        GENERATION_LOGITS,
        BATCH_INDEX,
    )


class Postprocessing:
    """The postprocessing model: generated token ids in, text out."""

    TOKENS_BATCH = "TOKENS_BATCH"
    SEQUENCE_LENGTH = "SEQUENCE_LENGTH"
    OUTPUT = "OUTPUT"

    INPUTS = (TOKENS_BATCH, SEQUENCE_LENGTH)
    OUTPUTS = (OUTPUT,)


# Each model's declared inputs and outputs, by model name.
INTERFACES = {
    "ensemble": (Text.ENSEMBLE_INPUTS, Text.OUTPUTS),
    "preprocessing": (Preprocessing.INPUTS, Preprocessing.OUTPUTS),
    "tensorrt_llm": (Engine.INPUTS, Engine.OUTPUTS),
    "postprocessing": (Postprocessing.INPUTS, Postprocessing.OUTPUTS),
    "tensorrt_llm_bls": (Text.BLS_INPUTS, Text.OUTPUTS),
}

# How a request flows, as the ensemble's steps and the BLS model's code both wire it.
TEXT_TO_PREPROCESSING = {
    Text.TEXT_INPUT: Preprocessing.QUERY,
    Text.MAX_TOKENS: Preprocessing.REQUEST_OUTPUT_LEN,
    Text.BAD_WORDS: Preprocessing.BAD_WORDS_DICT,
    Text.STOP_WORDS: Preprocessing.STOP_WORDS_DICT,
    Text.END_ID: Preprocessing.END_ID,
    Text.PAD_ID: Preprocessing.PAD_ID,
}
PREPROCESSING_TO_ENGINE = {
    Preprocessing.INPUT_ID: Engine.INPUT_IDS,
    Preprocessing.REQUEST_INPUT_LEN: Engine.INPUT_LENGTHS,
    Preprocessing.REQUEST_OUTPUT_LEN: Engine.REQUEST_OUTPUT_LEN,
    Preprocessing.STOP_WORDS_IDS: Engine.STOP_WORDS_LIST,
    Preprocessing.BAD_WORDS_IDS: Engine.BAD_WORDS_LIST,
    Preprocessing.OUT_END_ID: Engine.END_ID,
    Preprocessing.OUT_PAD_ID: Engine.PAD_ID,
}
# A client's sampling options, passed through to the engine.
TEXT_TO_ENGINE = {
    Text.TOP_K: Engine.RUNTIME_TOP_K,
    Text.TOP_P: Engine.RUNTIME_TOP_P,
    Text.TEMPERATURE: Engine.TEMPERATURE,
    Text.LENGTH_PENALTY: Engine.LEN_PENALTY,
    Text.REPETITION_PENALTY: Engine.REPETITION_PENALTY,
    Text.MIN_TOKENS: Engine.MIN_TOKENS,
    Text.PRESENCE_PENALTY: Engine.PRESENCE_PENALTY,
    Text.FREQUENCY_PENALTY: Engine.FREQUENCY_PENALTY,
    Text.SEED: Engine.SEED,
    Text.BEAM_WIDTH: Engine.BEAM_WIDTH,
    Text.STREAM: Engine.STREAMING,
}
ENGINE_TO_POSTPROCESSING = {
    Engine.OUTPUT_IDS: Postprocessing.TOKENS_BATCH,
    Engine.SEQUENCE_LENGTH: Postprocessing.SEQUENCE_LENGTH,
}


class LlmApi:
    """Triton's llmapi model (the PyTorch backend's one-model repository): text in, text out, the
    sampling options as `sampling_param_<SamplingParams field>`. Names as TensorRT-LLM's
    triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt and 1/helpers.py declare and read them
    (tensorrtllm_backend r26.04 @ ce68ff5f, submodule tensorrt_llm @ 2fdb9e66)."""

    MODEL = "tensorrt_llm"
    TEXT_INPUT = "text_input"
    STREAMING = "streaming"
    BEST_OF = "sampling_param_best_of"
    TEMPERATURE = "sampling_param_temperature"
    TOP_K = "sampling_param_top_k"
    TOP_P = "sampling_param_top_p"
    FREQUENCY_PENALTY = "sampling_param_frequency_penalty"
    PRESENCE_PENALTY = "sampling_param_presence_penalty"
    MAX_TOKENS = "sampling_param_max_tokens"
    STOP_WORDS = "sampling_param_stop"
    SEED = "sampling_param_seed"
    EXCLUDE_INPUT = "sampling_param_exclude_input_from_output"
    RETURN_PERF_METRICS = "sampling_param_return_perf_metrics"
    RETURN_FINISH_REASON = "return_finish_reason"
    RETURN_STOP_REASON = "return_stop_reason"
    RETURN_CUMULATIVE_LOGPROB = "return_cumulative_logprob"
    STOP = "stop"

    TEXT_OUTPUT = "text_output"
    FINISH_REASON = "finish_reason"
    STOP_REASON = "stop_reason"
    CUMULATIVE_LOGPROB = "cumulative_logprob"
    PERF_OUTPUTS = (
        "kv_cache_reused_block",
        "kv_cache_missed_block",
        "kv_cache_alloc_new_blocks",
        "kv_cache_alloc_total_blocks",
        "kv_cache_hit_rate",
        "arrival_time_ns",
        "first_scheduled_time_ns",
        "first_token_time_ns",
        "last_token_time_ns",
        "acceptance_rate",
        "total_accepted_draft_tokens",
        "total_draft_tokens",
    )

    INPUTS = (
        TEXT_INPUT,
        STREAMING,
        BEST_OF,
        TEMPERATURE,
        TOP_K,
        TOP_P,
        FREQUENCY_PENALTY,
        PRESENCE_PENALTY,
        MAX_TOKENS,
        STOP_WORDS,
        SEED,
        EXCLUDE_INPUT,
        RETURN_PERF_METRICS,
        RETURN_FINISH_REASON,
        RETURN_STOP_REASON,
        RETURN_CUMULATIVE_LOGPROB,
        STOP,
    )
    OUTPUTS = (TEXT_OUTPUT, FINISH_REASON, STOP_REASON, CUMULATIVE_LOGPROB, *PERF_OUTPUTS)
