"""Triton's llmapi model on the CPU: upstream's interface, the LLM API played by the reference runtime.

It serves the repository publish writes for the PyTorch backend as TensorRT-LLM's own
triton_backend/all_models/llmapi/tensorrt_llm/1/model.py does (read at TensorRT-LLM main @ 044a90d2
and tensorrtllm_backend @ dbae4e88; r26.04 ships it from its tensorrt_llm submodule @ 2fdb9e66):
- model.yaml, beside this file, is read with yaml.safe_load: auto_complete_config gives Triton
  `triton_config`'s decoupled and max_batch_size; every other key is an LLM(...) argument;
- a request holds one prompt (text_input, a 1-D tensor; its first element is the prompt) and
  `sampling_param_<name>` scalars for SamplingParams; `streaming` without decoupled mode is refused
  ("Streaming is only supported in decoupled mode.");
- each response's text_output is the RequestOutput's `outputs[i].text`, which the LLM API keeps
  cumulative: a streamed response holds the whole text so far, not a delta; the last one is flagged
  final. sampling_param_exclude_input_from_output defaults to False, so the text starts with the
  prompt (docs/llmapi.md at r26.04 shows such an answer);
- return_finish_reason adds finish_reason.

The sampling options the reference runtime lacks are refused by name instead of ignored.
"""

import os
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the helpers copied next to this file

from modelargs import model_config, repository_path  # noqa: E402
from responding import Responder  # noqa: E402
from tensornames import LlmApi  # noqa: E402

MODEL_YAML = "model.yaml"
# LLM(...) arguments the stand-in checks rather than passes on: it runs one rank of the PyTorch backend.
FIXED_ARGS = {"backend": "pytorch", "tensor_parallel_size": 1, "pipeline_parallel_size": 1}
# input -> the values that leave it off; anything else is refused on this target
UNSUPPORTED_UNLESS = {
    LlmApi.BEST_OF: (1,),
    LlmApi.TOP_P: (1.0,),
    LlmApi.FREQUENCY_PENALTY: (0.0,),
    LlmApi.PRESENCE_PENALTY: (0.0,),
    LlmApi.RETURN_PERF_METRICS: (False,),
    LlmApi.RETURN_CUMULATIVE_LOGPROB: (False,),
    LlmApi.STOP: (False,),
}


def read_model_yaml(directory):
    import yaml

    path = Path(directory) / MODEL_YAML
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or "triton_config" not in data or "model" not in data:
        raise pb_utils.TritonModelException(f"{path}: needs `model` and `triton_config`")
    return data


def _scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.size != 1:
        raise pb_utils.TritonModelException(f"Expected a scalar tensor for tensor {name}")
    return array.item(0)


class TritonPythonModel:
    @classmethod
    def auto_complete_config(cls, auto_complete_model_config):
        triton_config = read_model_yaml(os.path.dirname(os.path.abspath(__file__)))["triton_config"]
        auto_complete_model_config.set_model_transaction_policy(
            dict(decoupled=bool(triton_config["decoupled"]))
        )
        auto_complete_model_config.set_max_batch_size(int(triton_config["max_batch_size"]))
        return auto_complete_model_config

    def initialize(self, args):
        from pipeline.serving.pytorch.llm import StandInLLM

        config = model_config(args)
        llm_args = read_model_yaml(Path(args["model_repository"]) / args["model_version"])
        self.decoupled = bool(llm_args.pop("triton_config")["decoupled"])
        for key, value in FIXED_ARGS.items():
            got = llm_args.pop(key, value)
            if got != value:
                raise pb_utils.TritonModelException(
                    f"{MODEL_YAML}: {key} {got!r}: the CPU stand-in runs {value!r}"
                )
        checkpoint = repository_path(args, llm_args.pop("model"))
        self.output_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, LlmApi.TEXT_OUTPUT)["data_type"]
        )
        self.llm = StandInLLM(checkpoint, llm_args)
        self.responder = Responder(
            decoupled=self.decoupled,
            serve=self._serve,
            pb_utils=pb_utils,
            workers=int(llm_args["max_batch_size"]),
        )

    def execute(self, requests):
        return self.responder.execute(requests)

    def finalize(self):
        self.responder.close()

    def _serve(self, request, sender):
        for name, allowed in UNSUPPORTED_UNLESS.items():
            value = _scalar(request, name)
            if value is not None and value not in allowed:
                raise pb_utils.TritonModelException(f"{name}={value!r} is not supported by the CPU stand-in")
        stop_words = pb_utils.get_input_tensor_by_name(request, LlmApi.STOP_WORDS)
        if stop_words is not None and stop_words.as_numpy().size:
            raise pb_utils.TritonModelException(f"{LlmApi.STOP_WORDS} is not supported by the CPU stand-in")
        text_input = pb_utils.get_input_tensor_by_name(request, LlmApi.TEXT_INPUT)
        if text_input is None:
            raise pb_utils.TritonModelException("text_input is missing from the request")
        text_input = text_input.as_numpy()
        if text_input.ndim > 1:
            raise pb_utils.TritonModelException(
                "The current implementation only supports text_input being a 1D tensor."
            )
        prompt = text_input[0]
        prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        streaming = bool(_scalar(request, LlmApi.STREAMING) or False)
        if streaming and not self.decoupled:
            raise pb_utils.TritonModelException("Streaming is only supported in decoupled mode.")
        exclude_input = bool(_scalar(request, LlmApi.EXCLUDE_INPUT) or False)
        finish_reason = bool(_scalar(request, LlmApi.RETURN_FINISH_REASON) or False)
        max_tokens = _scalar(request, LlmApi.MAX_TOKENS)
        temperature = _scalar(request, LlmApi.TEMPERATURE)
        prompt_ids = self.llm.encode(prompt)

        def response(completion):
            tokens = (
                completion.token_ids if exclude_input else completion.prompt_token_ids + completion.token_ids
            )
            text = completion.text if exclude_input else self.llm.decode(tokens)
            outputs = [
                pb_utils.Tensor(
                    LlmApi.TEXT_OUTPUT, np.asarray([text.encode("utf-8")], dtype=self.output_dtype)
                )
            ]
            if finish_reason:
                reason = str(completion.finish_reason)
                outputs.append(pb_utils.Tensor(LlmApi.FINISH_REASON, np.asarray([reason], dtype=np.object_)))
            return pb_utils.InferenceResponse(output_tensors=outputs)

        def step(completion):
            if not completion.finished:
                sender.send(response(completion))

        done = self.llm.generate(
            prompt_ids,
            max_tokens=None if max_tokens is None else int(max_tokens),
            temperature=0.0 if temperature is None else float(temperature),
            top_k=int(_scalar(request, LlmApi.TOP_K) or 0),
            seed=int(_scalar(request, LlmApi.SEED) or 0),
            on_step=step if streaming else None,
        )
        return response(done)
