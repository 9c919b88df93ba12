"""tensorrt_llm for the reference backend: the TensorRT-LLM backend's interface, run by the reference runtime.

Same inputs and outputs as the C++ backend (config.pbtxt is the same template),
so the ensemble and the BLS model are the ones a GPU repository ships. Sampling
options the reference runtime lacks are refused by name rather than ignored.

It answers as the backend does (triton_backend/inflight_batcher_llm/src,
TensorRT-LLM 1.2): a request of batch B becomes B generations and B responses
of batch 1 in completion order, each with `batch_index` when B > 1 and it is
requested (model_instance_state.cc fillTritonResponse); B > 1 or streaming
without decoupled mode is refused (utils.cc createRequestsFromInputTensors);
execute only hands requests on, so many run at once; and a generation stops
when its client has gone or a `stop` request names its request id
(handleStopRequest, WaitForCancel).
"""

import os
import sys
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helpers copied next to this file

from modelargs import model_config, parameters, repository_path  # noqa: E402
from offvalues import ZERO, refuse_unless_off  # noqa: E402
from responding import Responder, batch_index_tensor  # noqa: E402
from tensornames import TEXT_TO_ENGINE, Engine  # noqa: E402
from textcodec import from_word_list, stop_position  # noqa: E402

# The inputs this model acts on; every other input the backend declares is accepted at its "off"
# value and refused by name otherwise (offvalues.py).
ACTED_ON = {
    Engine.INPUT_IDS,
    Engine.INPUT_LENGTHS,
    Engine.REQUEST_OUTPUT_LEN,
    Engine.END_ID,
    Engine.PAD_ID,
    Engine.STOP_WORDS_LIST,
    Engine.BAD_WORDS_LIST,
    Engine.TEMPERATURE,
    Engine.RUNTIME_TOP_K,
    Engine.RUNTIME_TOP_P,
    Engine.REPETITION_PENALTY,
    Engine.PRESENCE_PENALTY,
    Engine.FREQUENCY_PENALTY,
    Engine.MIN_TOKENS,
    Engine.LEN_PENALTY,
    Engine.SEED,
    Engine.RETURN_LOG_PROBS,
    Engine.NUM_RETURN_SEQUENCES,
    Engine.EXCLUDE_INPUT_IN_OUTPUT,
    Engine.STREAMING,
    Engine.STOP,
}
# Off values other than 0/false/empty: one beam; a top-p decay of 1 leaves top_p as it is.
OFF = {
    Engine.BEAM_WIDTH: (1,),
    Engine.RUNTIME_TOP_P_DECAY: (1.0,),
}
NOT_ACTED_ON = tuple(name for name in Engine.INPUTS if name not in ACTED_ON)
# A refusal names the input as the ensemble's client sent it too (length_penalty reaches us as len_penalty).
CLIENT_NAMES = {engine: text for text, engine in TEXT_TO_ENGINE.items() if engine != text}


# The TensorRT-LLM backend reads these with no fallback, so a config without one fails to load
# (model_instance_state.cc: getBatchingTypeFromParams, getGuidedDecodingConfigFromParams); so does this.
REQUIRED_PARAMETERS = (
    "gpt_model_type",
    "tokenizer_dir",
    "xgrammar_tokenizer_info_path",
    "guided_decoding_backend",
)


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _word_lists(array, batch):
    """Per prompt, the token sequences of a [batch, 2, L] word list (none when the input is absent)."""
    if array is None:
        return [[] for _ in range(batch)]
    return [from_word_list(row) for row in array.reshape(batch, 2, -1)]


def _scalar(request, name, default):
    value = _optional(request, name)
    return default if value is None else value.reshape(-1)[0].item()


class _Cancelled(Exception):
    """Raised from the token callback to end a generation nobody waits for."""


class _Answered(Exception):
    """Raised from the token callback once every prompt of a stream has its answer."""


class TritonPythonModel:
    def initialize(self, args):
        import torch

        from pipeline.backends import load_runner
        from pipeline.backends.base import NO_END_ID
        from pipeline.runtime.checkpoint import real_vocab_size

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        config = model_config(args)
        params = parameters(config)
        for name in REQUIRED_PARAMETERS:
            if name not in params:
                raise pb_utils.TritonModelException(f"Cannot find parameter with name: {name}")
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.exclude_input = params["exclude_input_in_output"] == "true"
        self.runner = load_runner(Path(repository_path(args, params["gpt_model_path"])))
        self.stopped: dict[str, threading.Event] = {}  # request id -> set by a `stop` request
        self.lock = threading.Lock()
        # In flight at once: as many requests as the engine's batch (the backend batches them in flight).
        self.responder = Responder(
            decoupled=self.decoupled,
            serve=self._serve,
            pb_utils=pb_utils,
            workers=self.runner.limits.max_batch_size,
        )
        self.vocab_size = real_vocab_size(self.runner.engine_config["pretrained_config"])
        self.no_end_id = NO_END_ID

    def finalize(self):
        self.responder.close()

    def execute(self, requests):
        return self.responder.execute(requests)

    def _serve(self, request, sender):
        from pipeline.runtime.sampling import Penalties, SamplingParams

        if bool(_scalar(request, Engine.STOP, False)):
            with self.lock:
                event = self.stopped.get(request.request_id())
            if event is not None:
                event.set()
            # the backend answers a stop with an empty (final) response
            return None if sender is not None else pb_utils.InferenceResponse(output_tensors=[])
        for name in NOT_ACTED_ON:
            refuse_unless_off(
                name,
                _optional(request, name),
                OFF.get(name, ZERO),
                who="the reference runtime",
                shown=CLIENT_NAMES.get(name, ""),
            )
        ids = _optional(request, Engine.INPUT_IDS)
        if ids is None:  # optional only for encoder-decoder models, which give encoder features instead
            raise ValueError(
                f"input '{Engine.INPUT_IDS}' is required by the reference runtime (a decoder-only model)"
            )
        lengths = pb_utils.get_input_tensor_by_name(request, Engine.INPUT_LENGTHS).as_numpy().reshape(-1)
        output_lens = (
            pb_utils.get_input_tensor_by_name(request, Engine.REQUEST_OUTPUT_LEN).as_numpy().reshape(-1)
        )
        batch = ids.shape[0]
        streaming = bool(_scalar(request, Engine.STREAMING, False))
        if sender is None and batch > 1:
            raise ValueError(
                "Batch size > 1 requires the tensorrt_llm backend to be using decoupled transaction policy"
            )
        sequences = int(_scalar(request, Engine.NUM_RETURN_SEQUENCES, 1))
        if sequences < 1:
            raise ValueError(f"input '{Engine.NUM_RETURN_SEQUENCES}' is {sequences}: it must be 1 or more")
        if sender is None and sequences > 1:
            raise ValueError(
                f"input '{Engine.NUM_RETURN_SEQUENCES}' > 1 needs the model deployed in decoupled mode "
                "(one response per sequence)"
            )
        if sender is None and streaming:
            raise ValueError("Streaming is only supported if model is deployed using decoupled mode.")
        # One generation row per prompt and returned sequence: sequences > 1 are drawn as independent
        # samples of the same prompt (beam_width 1), each answered on its own, as the executor's child
        # requests are, with sequence_index when requested (fillTritonResponse).
        rows = [(b, s) for b in range(batch) for s in range(sequences)]
        named = set(request.requested_output_names())
        labels = [
            (
                b if batch > 1 and Engine.BATCH_INDEX in named else None,
                s if sequences > 1 and Engine.SEQUENCE_INDEX in named else None,
            )
            for b, s in rows
        ]
        prompts = [ids[b, : lengths[b]].tolist() for b in range(batch)]
        output_lens = [int(output_lens[b]) for b, _ in rows]
        stop_words = _word_lists(_optional(request, Engine.STOP_WORDS_LIST), batch)
        end_id = _scalar(request, Engine.END_ID, None)
        self._check_token_id(Engine.END_ID, end_id, sentinel=self.no_end_id)
        self._check_token_id(Engine.PAD_ID, _scalar(request, Engine.PAD_ID, None))
        # An input left out takes the backend's default, which is TensorRT-LLM's (utils.cc
        # getSamplingConfigFromTensors leaves it unset; layers/defaultDecodingParams.h): temperature 1,
        # top_k 0, top_p 0 (greedy together: sampling.py), min_tokens 1, length_penalty 0.
        sampling = SamplingParams(
            temperature=float(_scalar(request, Engine.TEMPERATURE, 1.0)),
            top_k=int(_scalar(request, Engine.RUNTIME_TOP_K, 0)),
            top_p=float(_scalar(request, Engine.RUNTIME_TOP_P, 0.0)),
            seed=int(_scalar(request, Engine.SEED, 0)),
            penalties=Penalties(
                repetition=float(_scalar(request, Engine.REPETITION_PENALTY, 1.0)),
                presence=float(_scalar(request, Engine.PRESENCE_PENALTY, 0.0)),
                frequency=float(_scalar(request, Engine.FREQUENCY_PENALTY, 0.0)),
                min_tokens=int(_scalar(request, Engine.MIN_TOKENS, Penalties.min_tokens)),
            ),
            length_penalty=float(_scalar(request, Engine.LEN_PENALTY, SamplingParams.length_penalty)),
            num_return_sequences=sequences,
        )
        options = dict(
            max_new_tokens=max(output_lens),
            end_id=None if end_id is None else int(end_id),
            sampling=sampling,
            bad_words=_word_lists(_optional(request, Engine.BAD_WORDS_LIST), batch),
            stop_words=stop_words,
            log_probs=[] if bool(_scalar(request, Engine.RETURN_LOG_PROBS, False)) else None,
        )
        row_prompts = [prompts[b] for b, _ in rows]
        stop_words = [stop_words[b] for b, _ in rows]
        exclude_input = bool(_scalar(request, Engine.EXCLUDE_INPUT_IN_OUTPUT, self.exclude_input))
        generation = _Generation(self, request, sender)
        try:
            if streaming:
                return self._stream(prompts, stop_words, output_lens, options, generation, labels)
            return self._whole(
                prompts, row_prompts, stop_words, output_lens, options, generation, labels, exclude_input
            )
        except _Cancelled:
            pb_utils.Logger.log_info(f"tensorrt_llm: request '{request.request_id()}' cancelled")
            if sender is None:
                raise ValueError(f"request '{request.request_id()}' was stopped") from None
            return None
        finally:
            generation.close()

    def _whole(
        self, prompts, row_prompts, stop_words, output_lens, options, generation, labels, exclude_input
    ):
        """prompts: the request's; row_prompts, stop_words, output_lens and labels: per generated row."""
        generated = self.runner.generate(prompts, on_token=generation.check, **options)
        log_probs = options["log_probs"]
        answers = []
        for b, tokens in enumerate(generated):
            limit = int(output_lens[b])
            tokens = list(tokens[:limit])
            end = stop_position(tokens, stop_words[b])  # the runtime stopped there: the word is returned
            # the decoding step at which this row finished: an end_id, not returned, took one more
            steps = end if end is not None else len(tokens) + int(len(tokens) < limit)
            tokens = tokens[:end] if end is not None else tokens
            probs = None if log_probs is None else log_probs[b][: len(tokens)]
            answers.append((steps, b, tokens if exclude_input else row_prompts[b] + tokens, probs))
        pad = options["end_id"] or 0
        *first, last = sorted(answers, key=lambda answer: answer[:2])  # completion order; the last is final
        for _, b, tokens, probs in first:
            generation.sender.send(self._response(tokens, pad=pad, label=labels[b], log_probs=probs))
        _, b, tokens, probs = last
        return self._response(tokens, pad=pad, label=labels[b], log_probs=probs)

    def _check_token_id(self, name, value, sentinel=None):
        """A token id the engine cannot produce is a bad request, not a silent never-stop or garbage padding."""
        if value is not None and value != sentinel and not 0 <= int(value) < self.vocab_size:
            allowed = f"[0, {self.vocab_size})" + (
                f" or {sentinel} (no end token)" if sentinel is not None else ""
            )
            raise ValueError(f"input '{name}' is {int(value)}, outside the vocabulary: expected {allowed}")

    def _stream(self, prompts, stop_words, output_lens, options, generation, labels):
        """prompts: the request's; stop_words, output_lens and labels: per generated row."""
        sent: list[list[int]] = [[] for _ in stop_words]
        done = [False] * len(stop_words)
        log_probs = options["log_probs"]  # filled by generate before it calls on_token

        def on_token(index, token):
            generation.check(index, token)
            if done[index]:
                return  # past this row's own max_tokens the runtime goes on; its tokens are dropped
            sent[index].append(int(token))
            probs = None if log_probs is None else log_probs[index][-1:]
            cum = None if log_probs is None else sum(log_probs[index])
            generation.sender.send(
                self._response([int(token)], pad=0, label=labels[index], log_probs=probs, cum=cum)
            )
            done[index] = (
                len(sent[index]) >= int(output_lens[index])
                or stop_position(sent[index], stop_words[index]) is not None
            )
            if all(done):
                raise _Answered

        try:
            self.runner.generate(prompts, on_token=on_token, **options)
        except _Answered:
            pass
        return None

    @staticmethod
    def _response(tokens, *, pad, label, log_probs=None, cum=None):
        """One response of batch 1 and one beam: output_ids [1, 1, len], sequence_length [1, 1]; with log
        probabilities, output_log_probs [1, 1, len] (the generated tokens') and cum_log_probs [1, 1] (their
        sum, or `cum`: the running sum a streamed step carries), the backend's config.pbtxt dims
        with the batch dimension in front."""
        output_ids = np.full((1, 1, max(1, len(tokens))), pad, dtype=np.int32)
        output_ids[0, 0, : len(tokens)] = tokens
        tensors = [
            pb_utils.Tensor(Engine.OUTPUT_IDS, output_ids),
            pb_utils.Tensor(Engine.SEQUENCE_LENGTH, np.array([[len(tokens)]], dtype=np.int32)),
        ]
        if log_probs is not None:
            total = sum(log_probs) if cum is None else cum
            tensors.append(
                pb_utils.Tensor(Engine.OUTPUT_LOG_PROBS, np.array([[log_probs]], dtype=np.float32))
            )
            tensors.append(pb_utils.Tensor(Engine.CUM_LOG_PROBS, np.array([[total]], dtype=np.float32)))
        batch_index, sequence_index = label
        if batch_index is not None:
            tensors.append(batch_index_tensor(pb_utils, batch_index))
        if sequence_index is not None:
            tensors.append(
                pb_utils.Tensor(Engine.SEQUENCE_INDEX, np.array([[sequence_index]], dtype=np.int32))
            )
        return pb_utils.InferenceResponse(output_tensors=tensors)


class _Generation:
    """One request's generation: its sender, and whether anyone still waits for it."""

    def __init__(self, model, request, sender):
        self.model, self.sender = model, sender
        self.request_id = request.request_id()
        self.stop = threading.Event()
        if self.request_id:
            with model.lock:
                model.stopped[self.request_id] = self.stop

    def check(self, _index, _token):
        """Per generated token: end the generation once its client has gone or a stop names it."""
        if self.stop.is_set() or (self.sender is not None and self.sender.is_cancelled()):
            raise _Cancelled

    def close(self):
        if self.request_id:
            with self.model.lock:
                self.model.stopped.pop(self.request_id, None)
