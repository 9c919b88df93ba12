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

    Every input and output the TensorRT-LLM backend's own ensemble and BLS model declare (r26.04; held
    by tests/test_upstream_interface.py), so their clients work with ours unchanged.
    """

    TEXT_INPUT = "text_input"
    DECODER_TEXT_INPUT = "decoder_text_input"
    MAX_TOKENS = "max_tokens"
    NUM_RETURN_SEQUENCES = "num_return_sequences"
    BAD_WORDS = "bad_words"
    STOP_WORDS = "stop_words"
    EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
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
    RETURN_LOG_PROBS = "return_log_probs"
    RETURN_CONTEXT_LOGITS = "return_context_logits"
    RETURN_GENERATION_LOGITS = "return_generation_logits"
    RETURN_PERF_METRICS = "return_perf_metrics"
    RETURN_NUM_INPUT_TOKENS = "return_num_input_tokens"
    RETURN_NUM_OUTPUT_TOKENS = "return_num_output_tokens"
    BEAM_WIDTH = "beam_width"
    STREAM = "stream"
    PROMPT_EMBEDDING_TABLE = "prompt_embedding_table"
    PROMPT_TABLE_EXTRA_ID = "prompt_table_extra_id"
    PROMPT_VOCAB_SIZE = "prompt_vocab_size"
    EMBEDDING_BIAS_WORDS = "embedding_bias_words"
    EMBEDDING_BIAS_WEIGHTS = "embedding_bias_weights"
    LORA_TASK_ID = "lora_task_id"
    LORA_WEIGHTS = "lora_weights"
    LORA_CONFIG = "lora_config"
    GUIDED_DECODING_GUIDE_TYPE = "guided_decoding_guide_type"
    GUIDED_DECODING_GUIDE = "guided_decoding_guide"
    # The BLS model's own: images and video (multimodal models), and speculative decoding.
    IMAGE_INPUT = "image_input"
    IMAGE_BYTES_INPUT = "image_bytes_input"
    IMAGE_URL_INPUT = "image_url_input"
    VIDEO_BYTES_INPUT = "video_bytes_input"
    NUM_DRAFT_TOKENS = "num_draft_tokens"
    USE_DRAFT_LOGITS = "use_draft_logits"

    TEXT_OUTPUT = "text_output"
    CUM_LOG_PROBS = "cum_log_probs"
    OUTPUT_LOG_PROBS = "output_log_probs"
    CONTEXT_LOGITS = "context_logits"
    GENERATION_LOGITS = "generation_logits"
    BATCH_INDEX = BATCH_INDEX
    SEQUENCE_INDEX = "sequence_index"
    NUM_INPUT_TOKENS = "num_input_tokens"
    NUM_OUTPUT_TOKENS = "num_output_tokens"

    ENSEMBLE_INPUTS = (
        TEXT_INPUT,
        DECODER_TEXT_INPUT,
        MAX_TOKENS,
        NUM_RETURN_SEQUENCES,
        BAD_WORDS,
        STOP_WORDS,
        EXCLUDE_INPUT_IN_OUTPUT,
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
        RETURN_LOG_PROBS,
        RETURN_CONTEXT_LOGITS,
        RETURN_GENERATION_LOGITS,
        RETURN_PERF_METRICS,
        RETURN_NUM_INPUT_TOKENS,
        RETURN_NUM_OUTPUT_TOKENS,
        BEAM_WIDTH,
        STREAM,
        PROMPT_EMBEDDING_TABLE,
        PROMPT_TABLE_EXTRA_ID,
        PROMPT_VOCAB_SIZE,
        EMBEDDING_BIAS_WORDS,
        EMBEDDING_BIAS_WEIGHTS,
        LORA_TASK_ID,
        LORA_WEIGHTS,
        LORA_CONFIG,
        GUIDED_DECODING_GUIDE_TYPE,
        GUIDED_DECODING_GUIDE,
    )
    # What the BLS model takes and the ensemble does not (it refuses them unless off: a text-only model
    # without a draft model).
    BLS_ONLY_INPUTS = (
        IMAGE_INPUT,
        IMAGE_BYTES_INPUT,
        IMAGE_URL_INPUT,
        VIDEO_BYTES_INPUT,
        NUM_DRAFT_TOKENS,
        USE_DRAFT_LOGITS,
    )
    BLS_INPUTS = ENSEMBLE_INPUTS + BLS_ONLY_INPUTS
    # Engine metrics (KV cache blocks, timings, draft acceptance), passed on as the engine gives them.
    METRICS_OUTPUTS = (
        "kv_cache_alloc_new_blocks",
        "kv_cache_reused_blocks",
        "kv_cache_alloc_total_blocks",
        "arrival_time_ns",
        "first_scheduled_time_ns",
        "first_token_time_ns",
        "last_token_time_ns",
        "acceptance_rate",
        "total_accepted_draft_tokens",
        "total_draft_tokens",
    )
    OUTPUTS = (
        TEXT_OUTPUT,
        CUM_LOG_PROBS,
        OUTPUT_LOG_PROBS,
        CONTEXT_LOGITS,
        GENERATION_LOGITS,
        BATCH_INDEX,
        SEQUENCE_INDEX,
        *METRICS_OUTPUTS,
        NUM_INPUT_TOKENS,
        NUM_OUTPUT_TOKENS,
    )


class Preprocessing:
    """The preprocessing model: prompt text and word lists in, token ids out (and, for multimodal
    models, image tensors, which a text-only tokenizer never produces)."""

    QUERY = "QUERY"
    DECODER_QUERY = "DECODER_QUERY"
    REQUEST_OUTPUT_LEN = "REQUEST_OUTPUT_LEN"
    BAD_WORDS_DICT = "BAD_WORDS_DICT"
    STOP_WORDS_DICT = "STOP_WORDS_DICT"
    EMBEDDING_BIAS_WORDS = "EMBEDDING_BIAS_WORDS"
    EMBEDDING_BIAS_WEIGHTS = "EMBEDDING_BIAS_WEIGHTS"
    END_ID = "END_ID"
    PAD_ID = "PAD_ID"
    PROMPT_TABLE_EXTRA_ID = "PROMPT_TABLE_EXTRA_ID"
    MULTIMODAL_INPUTS = ("IMAGE_BYTES", "IMAGE_URL", "IMAGES", "VIDEO_BYTES")

    INPUT_ID = "INPUT_ID"
    REQUEST_INPUT_LEN = "REQUEST_INPUT_LEN"
    DECODER_INPUT_ID = "DECODER_INPUT_ID"
    REQUEST_DECODER_INPUT_LEN = "REQUEST_DECODER_INPUT_LEN"
    BAD_WORDS_IDS = "BAD_WORDS_IDS"
    STOP_WORDS_IDS = "STOP_WORDS_IDS"
    EMBEDDING_BIAS = "EMBEDDING_BIAS"
    OUT_END_ID = "OUT_END_ID"
    OUT_PAD_ID = "OUT_PAD_ID"
    OUT_PROMPT_TABLE_EXTRA_IDS = "OUT_PROMPT_TABLE_EXTRA_IDS"
    MULTIMODAL_OUTPUTS = (
        "PIXEL_VALUES",
        "ASPECT_RATIO_IDS",
        "ASPECT_RATIO_MASK",
        "CROSS_ATTENTION_MASK",
        "IMAGE_SIZES",
        "IS_VIDEO_INPUT",
        "ATTENTION_MASK",
        "IMAGE_GRID_THW",
        "VISION_INPUT_ID",
    )

    INPUTS = (
        QUERY,
        DECODER_QUERY,
        *MULTIMODAL_INPUTS,
        REQUEST_OUTPUT_LEN,
        BAD_WORDS_DICT,
        STOP_WORDS_DICT,
        EMBEDDING_BIAS_WORDS,
        EMBEDDING_BIAS_WEIGHTS,
        END_ID,
        PAD_ID,
        PROMPT_TABLE_EXTRA_ID,
    )
    OUTPUTS = (
        INPUT_ID,
        REQUEST_INPUT_LEN,
        DECODER_INPUT_ID,
        REQUEST_DECODER_INPUT_LEN,
        BAD_WORDS_IDS,
        STOP_WORDS_IDS,
        EMBEDDING_BIAS,
        REQUEST_OUTPUT_LEN,
        OUT_END_ID,
        OUT_PAD_ID,
        OUT_PROMPT_TABLE_EXTRA_IDS,
        *MULTIMODAL_OUTPUTS,
    )


class Engine:
    """The tensorrt_llm model: the TensorRT-LLM backend's names (utils.h InputFieldsNames,
    OutputFieldsNames), which the reference stand-in answers to as well."""

    INPUT_IDS = "input_ids"
    ENCODER_INPUT_FEATURES = "encoder_input_features"
    INPUT_LENGTHS = "input_lengths"
    REQUEST_OUTPUT_LEN = "request_output_len"
    NUM_RETURN_SEQUENCES = "num_return_sequences"
    DECODER_INPUT_IDS = "decoder_input_ids"
    DECODER_INPUT_LENGTHS = "decoder_input_lengths"
    END_ID = "end_id"
    PAD_ID = "pad_id"
    STOP_WORDS_LIST = "stop_words_list"
    BAD_WORDS_LIST = "bad_words_list"
    EMBEDDING_BIAS = "embedding_bias"
    BEAM_WIDTH = "beam_width"
    TEMPERATURE = "temperature"
    RUNTIME_TOP_K = "runtime_top_k"
    RUNTIME_TOP_P = "runtime_top_p"
    RUNTIME_TOP_P_MIN = "runtime_top_p_min"
    RUNTIME_TOP_P_DECAY = "runtime_top_p_decay"
    RUNTIME_TOP_P_RESET_IDS = "runtime_top_p_reset_ids"
    LEN_PENALTY = "len_penalty"
    EARLY_STOPPING = "early_stopping"
    REPETITION_PENALTY = "repetition_penalty"
    MIN_TOKENS = "min_tokens"
    BEAM_SEARCH_DIVERSITY_RATE = "beam_search_diversity_rate"
    PRESENCE_PENALTY = "presence_penalty"
    FREQUENCY_PENALTY = "frequency_penalty"
    SEED = "seed"
    RETURN_LOG_PROBS = "return_log_probs"
    RETURN_CONTEXT_LOGITS = "return_context_logits"
    RETURN_GENERATION_LOGITS = "return_generation_logits"
    RETURN_PERF_METRICS = "return_perf_metrics"
    RETURN_NUM_INPUT_TOKENS = "return_num_input_tokens"
    RETURN_NUM_OUTPUT_TOKENS = "return_num_output_tokens"
    EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
    STOP = "stop"  # a request naming another's request id ends that generation
    STREAMING = "streaming"
    PROMPT_EMBEDDING_TABLE = "prompt_embedding_table"
    PROMPT_TABLE_EXTRA_IDS = "prompt_table_extra_ids"
    PROMPT_VOCAB_SIZE = "prompt_vocab_size"
    LORA_TASK_ID = "lora_task_id"
    LORA_WEIGHTS = "lora_weights"
    LORA_CONFIG = "lora_config"
    GUIDED_DECODING_GUIDE_TYPE = "guided_decoding_guide_type"
    GUIDED_DECODING_GUIDE = "guided_decoding_guide"
    # Encoder-decoder, speculative, multimodal, disaggregated and KV-retention inputs: declared as the
    # backend declares them; the reference runtime takes them only at their off values.
    MODEL_FEATURE_INPUTS = (
        "encoder_output_lengths",
        "draft_input_ids",
        "draft_logits",
        "draft_acceptance_threshold",
        "cross_attention_mask",
        "mrope_rotary_cos_sin",
        "mrope_position_deltas",
        "context_phase_params",
        "skip_cross_attn_blocks",
        "retention_token_range_starts",
        "retention_token_range_ends",
        "retention_token_range_priorities",
        "retention_token_range_durations_ms",
        "retention_decode_priority",
        "retention_decode_duration_ms",
        "lookahead_window_size",
        "lookahead_ngram_size",
        "lookahead_verification_set_size",
    )

    OUTPUT_IDS = "output_ids"
    SEQUENCE_LENGTH = "sequence_length"
    CUM_LOG_PROBS = "cum_log_probs"
    OUTPUT_LOG_PROBS = "output_log_probs"
    CONTEXT_LOGITS = "context_logits"
    GENERATION_LOGITS = "generation_logits"
    BATCH_INDEX = BATCH_INDEX
    SEQUENCE_INDEX = "sequence_index"
    CONTEXT_PHASE_PARAMS = "context_phase_params"
    NUM_INPUT_TOKENS = "num_input_tokens"
    NUM_OUTPUT_TOKENS = "num_output_tokens"

    INPUTS = (
        INPUT_IDS,
        ENCODER_INPUT_FEATURES,
        INPUT_LENGTHS,
        REQUEST_OUTPUT_LEN,
        NUM_RETURN_SEQUENCES,
        DECODER_INPUT_IDS,
        DECODER_INPUT_LENGTHS,
        END_ID,
        PAD_ID,
        STOP_WORDS_LIST,
        BAD_WORDS_LIST,
        EMBEDDING_BIAS,
        BEAM_WIDTH,
        TEMPERATURE,
        RUNTIME_TOP_K,
        RUNTIME_TOP_P,
        RUNTIME_TOP_P_MIN,
        RUNTIME_TOP_P_DECAY,
        RUNTIME_TOP_P_RESET_IDS,
        LEN_PENALTY,
        EARLY_STOPPING,
        REPETITION_PENALTY,
        MIN_TOKENS,
        BEAM_SEARCH_DIVERSITY_RATE,
        PRESENCE_PENALTY,
        FREQUENCY_PENALTY,
        SEED,
        RETURN_LOG_PROBS,
        RETURN_CONTEXT_LOGITS,
        RETURN_GENERATION_LOGITS,
        RETURN_PERF_METRICS,
        RETURN_NUM_INPUT_TOKENS,
        RETURN_NUM_OUTPUT_TOKENS,
        EXCLUDE_INPUT_IN_OUTPUT,
        STOP,
        STREAMING,
        PROMPT_EMBEDDING_TABLE,
        PROMPT_TABLE_EXTRA_IDS,
        PROMPT_VOCAB_SIZE,
        LORA_TASK_ID,
        LORA_WEIGHTS,
        LORA_CONFIG,
        GUIDED_DECODING_GUIDE_TYPE,
        GUIDED_DECODING_GUIDE,
        *MODEL_FEATURE_INPUTS,
    )
    METRICS_OUTPUTS = Text.METRICS_OUTPUTS
    OUTPUTS = (
        OUTPUT_IDS,
        SEQUENCE_LENGTH,
        CUM_LOG_PROBS,
        OUTPUT_LOG_PROBS,
        CONTEXT_LOGITS,
        GENERATION_LOGITS,
        BATCH_INDEX,
        SEQUENCE_INDEX,
        CONTEXT_PHASE_PARAMS,
        *METRICS_OUTPUTS,
        NUM_INPUT_TOKENS,
        NUM_OUTPUT_TOKENS,
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

# How a request flows, as the ensemble's steps and the BLS model's code both wire it (as the backend's
# own ensemble wires its steps).
TEXT_TO_PREPROCESSING = {
    Text.TEXT_INPUT: Preprocessing.QUERY,
    Text.DECODER_TEXT_INPUT: Preprocessing.DECODER_QUERY,
    Text.MAX_TOKENS: Preprocessing.REQUEST_OUTPUT_LEN,
    Text.BAD_WORDS: Preprocessing.BAD_WORDS_DICT,
    Text.STOP_WORDS: Preprocessing.STOP_WORDS_DICT,
    Text.EMBEDDING_BIAS_WORDS: Preprocessing.EMBEDDING_BIAS_WORDS,
    Text.EMBEDDING_BIAS_WEIGHTS: Preprocessing.EMBEDDING_BIAS_WEIGHTS,
    Text.END_ID: Preprocessing.END_ID,
    Text.PAD_ID: Preprocessing.PAD_ID,
    Text.PROMPT_TABLE_EXTRA_ID: Preprocessing.PROMPT_TABLE_EXTRA_ID,
}
PREPROCESSING_TO_ENGINE = {
    Preprocessing.INPUT_ID: Engine.INPUT_IDS,
    Preprocessing.DECODER_INPUT_ID: Engine.DECODER_INPUT_IDS,
    Preprocessing.REQUEST_INPUT_LEN: Engine.INPUT_LENGTHS,
    Preprocessing.REQUEST_DECODER_INPUT_LEN: Engine.DECODER_INPUT_LENGTHS,
    Preprocessing.REQUEST_OUTPUT_LEN: Engine.REQUEST_OUTPUT_LEN,
    Preprocessing.STOP_WORDS_IDS: Engine.STOP_WORDS_LIST,
    Preprocessing.BAD_WORDS_IDS: Engine.BAD_WORDS_LIST,
    Preprocessing.EMBEDDING_BIAS: Engine.EMBEDDING_BIAS,
    Preprocessing.OUT_END_ID: Engine.END_ID,
    Preprocessing.OUT_PAD_ID: Engine.PAD_ID,
    Preprocessing.OUT_PROMPT_TABLE_EXTRA_IDS: Engine.PROMPT_TABLE_EXTRA_IDS,
}
# A client's options, passed through to the engine.
TEXT_TO_ENGINE = {
    Text.EXCLUDE_INPUT_IN_OUTPUT: Engine.EXCLUDE_INPUT_IN_OUTPUT,
    Text.TOP_K: Engine.RUNTIME_TOP_K,
    Text.TOP_P: Engine.RUNTIME_TOP_P,
    Text.TEMPERATURE: Engine.TEMPERATURE,
    Text.LENGTH_PENALTY: Engine.LEN_PENALTY,
    Text.REPETITION_PENALTY: Engine.REPETITION_PENALTY,
    Text.MIN_TOKENS: Engine.MIN_TOKENS,
    Text.PRESENCE_PENALTY: Engine.PRESENCE_PENALTY,
    Text.FREQUENCY_PENALTY: Engine.FREQUENCY_PENALTY,
    Text.SEED: Engine.SEED,
    Text.RETURN_LOG_PROBS: Engine.RETURN_LOG_PROBS,
    Text.RETURN_CONTEXT_LOGITS: Engine.RETURN_CONTEXT_LOGITS,
    Text.RETURN_GENERATION_LOGITS: Engine.RETURN_GENERATION_LOGITS,
    Text.RETURN_PERF_METRICS: Engine.RETURN_PERF_METRICS,
    Text.RETURN_NUM_INPUT_TOKENS: Engine.RETURN_NUM_INPUT_TOKENS,
    Text.RETURN_NUM_OUTPUT_TOKENS: Engine.RETURN_NUM_OUTPUT_TOKENS,
    Text.NUM_RETURN_SEQUENCES: Engine.NUM_RETURN_SEQUENCES,
    Text.BEAM_WIDTH: Engine.BEAM_WIDTH,
    Text.STREAM: Engine.STREAMING,
    Text.PROMPT_EMBEDDING_TABLE: Engine.PROMPT_EMBEDDING_TABLE,
    Text.PROMPT_VOCAB_SIZE: Engine.PROMPT_VOCAB_SIZE,
    Text.LORA_TASK_ID: Engine.LORA_TASK_ID,
    Text.LORA_WEIGHTS: Engine.LORA_WEIGHTS,
    Text.LORA_CONFIG: Engine.LORA_CONFIG,
    Text.GUIDED_DECODING_GUIDE_TYPE: Engine.GUIDED_DECODING_GUIDE_TYPE,
    Text.GUIDED_DECODING_GUIDE: Engine.GUIDED_DECODING_GUIDE,
}
ENGINE_TO_POSTPROCESSING = {
    Engine.OUTPUT_IDS: Postprocessing.TOKENS_BATCH,
    Engine.SEQUENCE_LENGTH: Postprocessing.SEQUENCE_LENGTH,
}
# The engine's outputs a client gets as they are (all the ensemble's outputs but text_output).
ENGINE_TO_TEXT = {name: name for name in Text.OUTPUTS if name != Text.TEXT_OUTPUT}


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
