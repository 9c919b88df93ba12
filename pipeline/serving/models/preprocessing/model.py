"""preprocessing: prompt text -> token ids; stop/bad words -> Triton word lists; default end/pad ids."""

import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helpers copied next to this file

from modelargs import model_config, parameters, repository_path  # noqa: E402
from offvalues import refuse_unless_off  # noqa: E402
from tensornames import TEXT_TO_PREPROCESSING  # noqa: E402
from tensornames import Preprocessing as Pre  # noqa: E402
from textcodec import to_word_lists  # noqa: E402

# Encoder-decoder, multimodal, embedding-bias and prompt-tuning inputs: a text-only decoder tokenizer
# takes them only when off (empty, or 0).
UNSUPPORTED = (
    Pre.DECODER_QUERY,
    *Pre.MULTIMODAL_INPUTS,
    Pre.EMBEDDING_BIAS_WORDS,
    Pre.EMBEDDING_BIAS_WEIGHTS,
    Pre.PROMPT_TABLE_EXTRA_ID,
)
CLIENT_NAMES = {pre: text for text, pre in TEXT_TO_PREPROCESSING.items()}


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _strings(array) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1).tolist()]


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        params = parameters(model_config(args))
        self.tokenizer = AutoTokenizer.from_pretrained(repository_path(args, params["tokenizer_dir"]))
        self.add_special_tokens = params["add_special_tokens"] == "true"
        self.end_id = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_id

    def _encode_word(self, word: str) -> list[int]:
        return self.tokenizer.encode(word, add_special_tokens=False)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._tensors(request)))
            except Exception as exc:  # the client gets the reason; the server keeps serving
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def _tensors(self, request):
        for name in UNSUPPORTED:
            refuse_unless_off(
                name,
                _optional(request, name),
                who="the preprocessing model",
                shown=CLIENT_NAMES.get(name, ""),
            )
        queries = _strings(pb_utils.get_input_tensor_by_name(request, Pre.QUERY).as_numpy())
        batch = len(queries)
        ids = [self.tokenizer.encode(q, add_special_tokens=self.add_special_tokens) for q in queries]
        width = max(len(i) for i in ids)
        end_in, pad_in = _optional(request, Pre.END_ID), _optional(request, Pre.PAD_ID)
        end_id = end_in.reshape(batch, 1) if end_in is not None else np.full((batch, 1), self.end_id)
        pad_id = pad_in.reshape(batch, 1) if pad_in is not None else np.full((batch, 1), self.pad_id)
        input_ids = np.zeros((batch, width), dtype=np.int32)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            input_ids[row, len(tokens) :] = pad_id[row, 0]
        word_lists = {}
        for name in (Pre.STOP_WORDS_DICT, Pre.BAD_WORDS_DICT):
            words = _optional(request, name)
            rows = (
                [[] for _ in range(batch)]
                if words is None
                else [_strings(r) for r in words.reshape(batch, -1)]
            )
            word_lists[name] = to_word_lists([[w for w in r if w] for r in rows], self._encode_word)
        output_len = pb_utils.get_input_tensor_by_name(request, Pre.REQUEST_OUTPUT_LEN).as_numpy()
        return [
            pb_utils.Tensor(Pre.INPUT_ID, input_ids),
            pb_utils.Tensor(Pre.REQUEST_INPUT_LEN, np.array([[len(i)] for i in ids], dtype=np.int32)),
            pb_utils.Tensor(Pre.REQUEST_OUTPUT_LEN, output_len.astype(np.int32).reshape(batch, 1)),
            pb_utils.Tensor(Pre.STOP_WORDS_IDS, word_lists[Pre.STOP_WORDS_DICT]),
            pb_utils.Tensor(Pre.BAD_WORDS_IDS, word_lists[Pre.BAD_WORDS_DICT]),
            pb_utils.Tensor(Pre.OUT_END_ID, end_id.astype(np.int32)),
            pb_utils.Tensor(Pre.OUT_PAD_ID, pad_id.astype(np.int32)),
        ]
