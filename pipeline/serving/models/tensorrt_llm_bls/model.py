"""tensorrt_llm_bls: the ensemble's job in Python: tokenize, generate, detokenize.

Calls `preprocessing` and the engine model through business logic scripting.
Streamed text arrives as whole characters (TextStream), and with
accumulate_tokens the text is decoded from every token so far rather than
from each piece alone.
"""

import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helpers copied next to this file

from modelargs import model_config, parameters, repository_path  # noqa: E402
from responding import answer  # noqa: E402
from textcodec import PieceDecoder, TextStream  # noqa: E402

# bls input -> preprocessing input
PREPROCESSING_INPUTS = {
    "text_input": "QUERY",
    "max_tokens": "REQUEST_OUTPUT_LEN",
    "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT",
    "end_id": "END_ID",
    "pad_id": "PAD_ID",
}
# preprocessing output -> engine input
ENGINE_INPUTS = {
    "INPUT_ID": "input_ids",
    "REQUEST_INPUT_LEN": "input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len",
    "STOP_WORDS_IDS": "stop_words_list",
    "BAD_WORDS_IDS": "bad_words_list",
    "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
}
# bls input -> engine input, passed through
SAMPLING_INPUTS = {
    "top_k": "runtime_top_k",
    "top_p": "runtime_top_p",
    "temperature": "temperature",
    "seed": "seed",
}


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
        self.accumulate = params["accumulate_tokens"] == "true"
        tokenizer = AutoTokenizer.from_pretrained(repository_path(args, params["tokenizer_dir"]))
        self.decoder = PieceDecoder(tokenizer)

    def execute(self, requests):
        return answer(requests, decoupled=self.decoupled, serve=self._respond, pb_utils=pb_utils)

    def _respond(self, request, sender):
        text = self._serve(request, sender)
        return None if text is None else self._text_response(text)

    @staticmethod
    def _text_response(text):
        out = np.array([[text.encode("utf-8")]], dtype=np.object_)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", out)])

    def _serve(self, request, sender):
        stream_in = pb_utils.get_input_tensor_by_name(request, "stream")
        streaming = bool(stream_in is not None and stream_in.as_numpy().reshape(-1)[0])
        if streaming and sender is None:
            raise ValueError("streaming needs the model deployed in decoupled mode (publish.decoupled)")
        pre_inputs = []
        for name, pre_name in PREPROCESSING_INPUTS.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                pre_inputs.append(pb_utils.Tensor(pre_name, tensor.as_numpy()))
        pre = _raise_on_error(
            pb_utils.InferenceRequest(
                model_name="preprocessing", inputs=pre_inputs, requested_output_names=list(ENGINE_INPUTS)
            ).exec()
        )
        if pre.output_tensors()[0].as_numpy().shape[0] != 1:
            raise ValueError("tensorrt_llm_bls serves one prompt per request")
        engine_inputs = {}
        for pre_name, name in ENGINE_INPUTS.items():
            engine_inputs[name] = pb_utils.get_output_tensor_by_name(pre, pre_name).as_numpy()
        for name, engine_name in SAMPLING_INPUTS.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                engine_inputs[engine_name] = tensor.as_numpy()
        engine_inputs["streaming"] = np.array([[streaming]], dtype=bool)
        # Shapes as the config declares them, batch first ([1, 1] for a dims [1] input): a BLS
        # request is checked against the config before its reshape applies.
        tensors = [pb_utils.Tensor(name, value) for name, value in engine_inputs.items()]
        engine_request = pb_utils.InferenceRequest(
            model_name=self.engine_model,
            inputs=tensors,
            requested_output_names=["output_ids", "sequence_length"],
        )
        stream = TextStream(self.decoder)
        pieces = []
        for response in engine_request.exec(decoupled=True):
            _raise_on_error(response)
            if not response.output_tensors():
                continue  # the final, empty response of a decoupled model
            ids = pb_utils.get_output_tensor_by_name(response, "output_ids").as_numpy()
            length = int(
                pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy().reshape(-1)[0]
            )
            tokens = ids[0, 0, :length].tolist()
            if not self.accumulate:
                pieces.append(self.decoder.decode(tokens))
            else:
                pieces.append(stream.push(tokens))
            if streaming and pieces[-1]:
                sender.send(self._text_response(pieces[-1]))
        tail = stream.flush() if self.accumulate else ""
        if streaming:
            return tail or None
        return "".join(pieces) + tail
