"""The CPU's stand-in for `tensorrt_llm.LLM`: what the llmapi Triton model and trtllm-serve call, played
by the reference runtime over the published Hugging Face checkpoint.

It behaves as TensorRT-LLM 1.2.x's LLM API does where the two consumers can see it:
- the prompt is tokenized with the checkpoint's tokenizer, special tokens added unless the request
  says otherwise (SamplingParams.add_special_tokens, default True; trtllm-serve's chat requests
  default it to False: the chat template brings its own);
- a result's `text` is the detokenized output so far, cumulative; `text_diff` is what a streamed
  step added (tensorrt_llm/executor/result.py CompletionOutput: `text_diff = text[_last_text_len:]`);
  decoding skips special tokens (SamplingParams.skip_special_tokens, default True);
- generate takes tensorrt_llm.SamplingParams' own keywords (sampling_params.py): a name upstream has
  no field for is refused, as its kw_only dataclass refuses it; fields left None take the C++
  runtime's defaults (pipeline/backends/trtllm_pytorch/sampling.py reads them);
- generation stops at the tokenizer's end id (not returned), at a stop token (cut from the output:
  include_stop_str_in_output defaults to False, executor/result.py) or after max_tokens, and says
  which in finish_reason ("stop" / "length");
- the options file is what LLM(model, **options) takes: max_batch_size and max_seq_len bound what it
  accepts, as the runtime enforces them.

Everything else the runtime lacks (stop strings, beam search, more than one output, logprobs) is
refused by name, never ignored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.backends.trtllm_pytorch.sampling import reference_sampling
from pipeline.core.errors import InputError

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass
class Completion:
    """One CompletionOutput of a request (the LLM API's RequestOutput.outputs[0]), as it stands."""

    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)  # generated so far
    text: str = ""  # cumulative
    finish_reason: str | None = None  # None while running
    last_text_len: int = 0  # how much of `text` the previous step had

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text_diff(self) -> str:
        return self.text[self.last_text_len :]


def read_options(path: Path) -> dict[str, Any]:
    """An LLM API options file (YAML; the pipeline writes it as JSON, which is YAML) as
    trtllm-serve and the llmapi model read theirs: yaml.safe_load."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"unreadable LLM API options: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise InputError("LLM API options must be a mapping", path=path)
    return data


class StandInLLM:
    """LLM(model=checkpoint_dir, **options) on the CPU."""

    def __init__(self, checkpoint_dir: Path, options: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        from pipeline.runtime import ReferenceModel
        from pipeline.runtime.limits import EngineLimits
        from pipeline.runtime.unified import load_unified
        from pipeline.runtime.weights import build_weights

        self.checkpoint_dir = checkpoint_dir
        self.options = options
        try:
            batch, seq = int(options["max_batch_size"]), int(options["max_seq_len"])
        except KeyError as exc:
            raise InputError(f"the LLM API options give no {exc.args[0]}") from None
        # max_input_len is TorchLlmArgs' (the build writes the profile's); unset, a prompt may take it all.
        prompt = int(options.get("max_input_len", seq))
        self.limits = EngineLimits(max_batch_size=batch, max_input_len=prompt, max_seq_len=seq)
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
        # Read as the gate's runner reads it: the PyTorch backend's linear methods on the unified checkpoint.
        config, tensors = load_unified(checkpoint_dir)
        self.model = ReferenceModel(config, build_weights(tensors, config, checkpoint_dir), self.limits)
        # The runtime runs one generation at a time; requests queue for it as they would for a slot.
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, checkpoint_dir: Path, options_file: Path) -> StandInLLM:
        return cls(checkpoint_dir, read_options(options_file))

    # --- text --------------------------------------------------------------------------------

    def encode(self, prompt: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The prompt trtllm-serve builds for a chat request: the checkpoint's chat template with the
        generation prompt appended, as text (serve/openai_server.py openai_chat -> apply_chat_template)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(
                "the checkpoint's tokenizer has no chat template", path=self.checkpoint_dir,
                hint="use /v1/completions, or publish a model whose tokenizer_config.json has one",
            )  # fmt: skip
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # --- generation --------------------------------------------------------------------------

    def generate(
        self,
        prompt_token_ids: list[int],
        *,
        on_step: Callable[[Completion], None] | None = None,
        **sampling_params: Any,
    ) -> Completion:
        """Generate as tensorrt_llm.SamplingParams(**sampling_params) asks; on_step sees the completion
        after each step whose text is whole (a character whose bytes span tokens is held back until it
        is complete). Returns the finished completion."""
        sampling = reference_sampling(sampling_params)
        if sampling.num_return_sequences != 1:
            raise InputError(
                f"SamplingParams.n={sampling.num_return_sequences} is not supported by the CPU stand-in"
            )
        max_tokens = sampling_params.get("max_tokens")
        if max_tokens is None:
            # An unset max_tokens takes what the sequence has left.
            max_tokens = self.limits.max_seq_len - len(prompt_token_ids)
        end_id = sampling_params.get("end_id")
        end_id = self.tokenizer.eos_token_id if end_id is None else end_id
        if sampling_params.get("ignore_eos"):
            end_id = None  # write max_tokens whatever the model says
        stop_ids = sampling_params.get("stop_token_ids") or []
        bad_ids = sampling_params.get("bad_token_ids") or []
        out = Completion(prompt_token_ids=list(prompt_token_ids))

        def step(_: int, token: int) -> None:
            out.token_ids.append(token)
            if on_step is None or token in stop_ids:  # a stop token is never shown: it is cut below
                return
            text = self.decode(out.token_ids)
            if text.endswith("\ufffd") or len(text) <= len(out.text):
                return
            out.last_text_len, out.text = len(out.text), text
            on_step(out)

        with self._lock:
            self.model.generate(
                [list(prompt_token_ids)],
                max_new_tokens=max_tokens,
                end_id=end_id,
                sampling=sampling,
                bad_words=[[[t] for t in bad_ids]] if bad_ids else (),
                stop_words=[[[t] for t in stop_ids]] if stop_ids else (),
                on_token=step,
            )
        stopped = bool(out.token_ids) and out.token_ids[-1] in stop_ids
        if stopped:
            out.token_ids.pop()  # a stop token is cut from the output (include_stop_str_in_output False)
        out.last_text_len, out.text = len(out.text), self.decode(out.token_ids)
        length = len(out.token_ids) >= max_tokens and not stopped
        out.finish_reason = FINISH_LENGTH if length else FINISH_STOP
        if on_step is not None:
            on_step(out)
        return out
