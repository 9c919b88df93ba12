"""tensorrt_llm_bls: the ensemble's job in Python: tokenize, generate, detokenize.

Calls the preprocessing and engine models, named by its parameters, through business logic scripting.
Streamed text arrives as whole characters (TextStream), and with
accumulate_tokens the text is decoded from every token so far rather than
from each piece alone. A request of several prompts is answered as the engine
answers it: one response per prompt (or per streamed piece), in completion
order, each with `batch_index`; so are several returned sequences, each with `sequence_index`, and
the engine's log probabilities go with the text they belong to. Decoupled, every request is served on its own
worker thread, so streams do not queue behind each other, and a stream whose
client has gone is stopped in the engine too (a `stop` request naming its id).
"""

import os
import sys
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helpers copied next to this file

from modelargs import model_config, parameters, repository_path  # noqa: E402
from offvalues import refuse_unless_off  # noqa: E402
from responding import Responder, batch_index_tensor  # noqa: E402
from tensornames import PREPROCESSING_TO_ENGINE, TEXT_TO_ENGINE, TEXT_TO_PREPROCESSING, Engine, Text  # noqa: E402
from textcodec import PieceDecoder, TextStream  # noqa: E402

# The client's options passed through to the engine as they are (the stream flag it sets itself).
ENGINE_OPTIONS = {name: engine for name, engine in TEXT_TO_ENGINE.items() if name != Text.STREAM}
# The engine's outputs that name which prompt and which returned sequence a response is for.
INDEXES = (Engine.BATCH_INDEX, Engine.SEQUENCE_INDEX)
# The engine's outputs handed on to the client unchanged (present when return_log_probs asked for them).
PASSED = (Engine.CUM_LOG_PROBS, Engine.OUTPUT_LOG_PROBS)


def response_tensor(response):
    """name -> a copy of the response's output of that name, or None."""

    def get(name):
        tensor = pb_utils.get_output_tensor_by_name(response, name)
        return None if tensor is None else pb_utils.Tensor(name, tensor.as_numpy())

    return get


def _raise_on_error(response):
    if response.has_error():
        raise pb_utils.TritonModelException(response.error().message())
    return response


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        config = model_config(args)
        params = parameters(config)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.engine_model = params["tensorrt_llm_model_name"]
        self.preprocessing_model = params["preprocessing_model_name"]
        self.accumulate = params["accumulate_tokens"] == "true"
        tokenizer = AutoTokenizer.from_pretrained(repository_path(args, params["tokenizer_dir"]))
        self.decoder = PieceDecoder(tokenizer)
        # As many at once as the engine batches (max_batch_size is the engine's when decoupled).
        self.responder = Responder(
            decoupled=self.decoupled,
            serve=self._serve,
            pb_utils=pb_utils,
            workers=int(config.get("max_batch_size", 1)),
        )

    def finalize(self):
        self.responder.close()

    def execute(self, requests):
        return self.responder.execute(requests)

    @staticmethod
    def _text_response(text, key=None, passed=()):
        """`key`: (prompt or None, sequence or None), each given where the request holds several;
        `passed`: the engine's log-probability tensors for this text, forwarded as they are."""
        out = np.array([[text.encode("utf-8")]], dtype=np.object_)
        tensors = [pb_utils.Tensor(Text.TEXT_OUTPUT, out), *passed]
        batch_index, sequence_index = key or (None, None)
        if batch_index is not None:
            tensors.append(batch_index_tensor(pb_utils, batch_index))
        if sequence_index is not None:
            tensors.append(
                pb_utils.Tensor(Engine.SEQUENCE_INDEX, np.array([[sequence_index]], dtype=np.int32))
            )
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _serve(self, request, sender):
        for name in Text.BLS_ONLY_INPUTS:  # images and video, a draft model: none here
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            refuse_unless_off(name, None if tensor is None else tensor.as_numpy(), who="this text-only model")
        stream_in = pb_utils.get_input_tensor_by_name(request, Text.STREAM)
        streaming = bool(stream_in is not None and stream_in.as_numpy().reshape(-1)[0])
        if streaming and sender is None:
            raise ValueError("streaming needs the model deployed in decoupled mode (publish.decoupled)")
        pre_inputs = []
        for name, pre_name in TEXT_TO_PREPROCESSING.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                pre_inputs.append(pb_utils.Tensor(pre_name, tensor.as_numpy()))
        pre = _raise_on_error(
            pb_utils.InferenceRequest(
                model_name=self.preprocessing_model,
                inputs=pre_inputs,
                requested_output_names=list(PREPROCESSING_TO_ENGINE),
            ).exec()
        )
        engine_inputs = {}
        for pre_name, name in PREPROCESSING_TO_ENGINE.items():
            tensor = pb_utils.get_output_tensor_by_name(pre, pre_name)
            if tensor is not None:  # a text-only tokenizer gives no decoder ids, bias or prompt-table ids
                engine_inputs[name] = tensor.as_numpy()
        batch = engine_inputs[Engine.INPUT_IDS].shape[0]
        for name, engine_name in ENGINE_OPTIONS.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                engine_inputs[engine_name] = tensor.as_numpy()
        # Shapes as the config declares them, batch first ([B, 1] for a dims [1] input): a BLS
        # request is checked against the config before its reshape applies.
        engine_inputs[Engine.STREAMING] = np.full((batch, 1), streaming, dtype=bool)
        request_id = f"bls-{uuid.uuid4().hex}"
        engine_request = pb_utils.InferenceRequest(
            model_name=self.engine_model,
            inputs=[pb_utils.Tensor(name, value) for name, value in engine_inputs.items()],
            requested_output_names=[Engine.OUTPUT_IDS, Engine.SEQUENCE_LENGTH, *PASSED, *INDEXES],
            request_id=request_id,
        )
        sequences = max(1, int(engine_inputs.get(Engine.NUM_RETURN_SEQUENCES, np.ones(1)).reshape(-1)[0]))
        keys = [(b, s) for b in range(batch) for s in range(sequences)]
        # one response per prompt and sequence, naming each where there are several, as the engine answers
        indexed = len(keys) > 1

        def label(key):
            return (key[0] if batch > 1 else None, key[1] if sequences > 1 else None)

        streams = {key: TextStream(self.decoder) for key in keys}
        pieces = {key: [] for key in keys}
        passed = {key: [] for key in keys}
        for response in engine_request.exec(decoupled=True):
            if sender is not None and sender.is_cancelled():
                self._stop(request_id)  # the client has gone: free the engine's slot
                return None
            _raise_on_error(response)
            if not response.output_tensors():
                continue  # the final, empty response of a decoupled model
            key = tuple(
                0 if out is None else int(out.as_numpy().reshape(-1)[0])
                for out in (pb_utils.get_output_tensor_by_name(response, name) for name in INDEXES)
            )
            ids = pb_utils.get_output_tensor_by_name(response, Engine.OUTPUT_IDS).as_numpy()
            length = int(
                pb_utils.get_output_tensor_by_name(response, Engine.SEQUENCE_LENGTH).as_numpy().reshape(-1)[0]
            )
            tokens = ids[0, 0, :length].tolist()
            pieces[key].append(streams[key].push(tokens) if self.accumulate else self.decoder.decode(tokens))
            passed[key] = [t for t in map(response_tensor(response), PASSED) if t is not None]
            if streaming and pieces[key][-1]:
                sender.send(self._text_response(pieces[key][-1], label(key), passed[key]))
            elif not streaming and indexed:  # this prompt's whole answer
                sender.send(
                    self._text_response(self._whole(pieces[key], streams[key]), label(key), passed[key])
                )
        if not indexed:
            (key,) = keys
            if not streaming:
                return self._text_response(self._whole(pieces[key], streams[key]), passed=passed[key])
            tail = streams[key].flush() if self.accumulate else ""
            return self._text_response(tail) if tail else None
        if streaming and self.accumulate:
            for key, stream in streams.items():
                tail = stream.flush()
                if tail:
                    sender.send(self._text_response(tail, label(key)))
        return None

    def _whole(self, pieces, stream):
        return "".join(pieces) + (stream.flush() if self.accumulate else "")

    def _stop(self, request_id):
        """Ask the engine to end the generation with this request id (the backend's `stop` input)."""
        one = np.ones((1, 1), dtype=np.int32)
        inputs = {Engine.INPUT_IDS: one, Engine.INPUT_LENGTHS: one, Engine.REQUEST_OUTPUT_LEN: one}
        stop = pb_utils.InferenceRequest(
            model_name=self.engine_model,
            inputs=[pb_utils.Tensor(n, v) for n, v in inputs.items()]
            + [pb_utils.Tensor(Engine.STOP, np.ones((1, 1), dtype=bool))],
            requested_output_names=[Engine.OUTPUT_IDS],
            request_id=request_id,
        )
        for response in stop.exec(decoupled=True):
            _raise_on_error(response)
