"""tensorrt_llm on the cpu-reference target: the TensorRT-LLM backend's interface, run by the reference runtime.

Same inputs and outputs as the C++ backend (config.pbtxt is the same template),
so the ensemble and the BLS model are the ones a GPU repository ships. Sampling
options the reference runtime lacks are refused by name rather than ignored.
"""

import os
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helpers copied next to this file

from modelargs import model_config, parameters, repository_path  # noqa: E402
from responding import answer  # noqa: E402
from textcodec import from_word_list, stop_position  # noqa: E402

# input -> the value that means "off"; anything else is refused on this target
UNSUPPORTED_UNLESS = {
    "beam_width": 1,
    "runtime_top_p": None,  # any value: the reference runtime samples top-k only
    "len_penalty": None,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "min_length": None,
    "return_log_probs": False,
    "encoder_input_features": None,
    "stop": False,  # cancelling a running request
}


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request, name, default):
    value = _optional(request, name)
    return default if value is None else value.reshape(-1)[0].item()


class TritonPythonModel:
    def initialize(self, args):
        import torch

        from pipeline.runners import NO_END_ID, load_runner

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        config = model_config(args)
        params = parameters(config)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.exclude_input = params["exclude_input_in_output"] == "true"
        self.runner = load_runner(Path(repository_path(args, params["gpt_model_path"])))
        self.vocab_size = int(self.runner.engine_config["pretrained_config"]["vocab_size"])
        self.no_end_id = NO_END_ID

    def execute(self, requests):
        return answer(requests, decoupled=self.decoupled, serve=self._serve, pb_utils=pb_utils)

    def _serve(self, request, sender):
        for name, off in UNSUPPORTED_UNLESS.items():
            value = _optional(request, name)
            if value is not None and (off is None or value.reshape(-1)[0].item() != off):
                raise ValueError(f"input '{name}' is not supported by the cpu-reference runtime")
        bad = _optional(request, "bad_words_list")
        if bad is not None and any(from_word_list(row) for row in bad.reshape(-1, 2, bad.shape[-1])):
            raise ValueError("input 'bad_words_list' is not supported by the cpu-reference runtime")
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "input_lengths").as_numpy().reshape(-1)
        output_lens = pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy().reshape(-1)
        batch = ids.shape[0]
        prompts = [ids[b, : lengths[b]].tolist() for b in range(batch)]
        stops = _optional(request, "stop_words_list")
        stop_words = [[] for _ in range(batch)]
        if stops is not None:
            stop_words = [from_word_list(row) for row in stops.reshape(batch, 2, -1)]
        end_id = _scalar(request, "end_id", None)
        self._check_token_id("end_id", end_id, sentinel=self.no_end_id)
        self._check_token_id("pad_id", _scalar(request, "pad_id", None))
        options = dict(
            max_new_tokens=int(output_lens.max()),
            end_id=None if end_id is None else int(end_id),
            temperature=float(_scalar(request, "temperature", 0.0)),
            top_k=int(_scalar(request, "runtime_top_k", 0)),
            seed=int(_scalar(request, "random_seed", 0)),
        )
        streaming = bool(_scalar(request, "streaming", False))
        if streaming:
            if sender is None:
                raise ValueError("streaming needs the model deployed in decoupled mode (publish.decoupled)")
            if batch != 1:
                raise ValueError("streaming serves one prompt per request")
            self._stream(prompts[0], stop_words[0], int(output_lens[0]), options, sender)
            return None
        generated = self.runner.generate(prompts, **options)
        outputs = []
        for b in range(batch):
            tokens = list(generated[b][: int(output_lens[b])])
            end = stop_position(tokens, stop_words[b])
            tokens = tokens[:end] if end is not None else tokens
            outputs.append(tokens if self.exclude_input else prompts[b] + tokens)
        return self._response(outputs, pad=options["end_id"] or 0)

    def _check_token_id(self, name, value, sentinel=None):
        """A token id the engine cannot produce is a bad request, not a silent never-stop or garbage padding."""
        if value is not None and value != sentinel and not 0 <= int(value) < self.vocab_size:
            allowed = f"[0, {self.vocab_size})" + (
                f" or {sentinel} (no end token)" if sentinel is not None else ""
            )
            raise ValueError(f"input '{name}' is {int(value)}, outside the vocabulary: expected {allowed}")

    def _stream(self, prompt, stop_words, limit, options, sender):
        sent: list[int] = []
        done = [False]

        def on_token(_index, token):
            if done[0]:
                return  # the reference runtime has no early exit; later tokens are dropped
            sent.append(int(token))
            sender.send(self._response([[int(token)]], pad=0))
            done[0] = len(sent) >= limit or stop_position(sent, stop_words) is not None

        self.runner.generate([prompt], on_token=on_token, **options)

    @staticmethod
    def _response(outputs, *, pad):
        width = max(1, max(len(o) for o in outputs))
        output_ids = np.full((len(outputs), 1, width), pad, dtype=np.int32)
        for b, tokens in enumerate(outputs):
            output_ids[b, 0, : len(tokens)] = tokens
        lengths = np.array([[len(o)] for o in outputs], dtype=np.int32)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("output_ids", output_ids),
                pb_utils.Tensor("sequence_length", lengths),
            ]
        )
