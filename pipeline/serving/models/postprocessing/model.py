"""postprocessing: generated token ids -> text, for a whole answer or one streamed piece."""

import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helpers copied next to this file

from modelargs import model_config, parameters, repository_path  # noqa: E402
from tensornames import Postprocessing  # noqa: E402
from textcodec import PieceDecoder  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        params = parameters(model_config(args))
        tokenizer = AutoTokenizer.from_pretrained(repository_path(args, params["tokenizer_dir"]))
        self.decoder = PieceDecoder(tokenizer)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tokens = pb_utils.get_input_tensor_by_name(request, Postprocessing.TOKENS_BATCH).as_numpy()
                lengths = pb_utils.get_input_tensor_by_name(
                    request, Postprocessing.SEQUENCE_LENGTH
                ).as_numpy()
                batch, beams = tokens.shape[0], tokens.shape[1]
                lengths = lengths.reshape(batch, beams)
                texts = [
                    self.decoder.decode(tokens[b, k, : lengths[b, k]].tolist())
                    for b in range(batch)
                    for k in range(beams)
                ]
                out = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(batch, beams)
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(Postprocessing.OUTPUT, out)])
                )
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
