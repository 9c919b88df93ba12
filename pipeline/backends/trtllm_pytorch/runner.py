"""A PyTorch-backend build through TensorRT-LLM's LLM API (`tensorrt_llm.LLM`, imported on first use),
with the runner API the gate, bench and smoke drive.

What the LLM API of TensorRT-LLM 1.2.x gives, and at what cost (read in NVIDIA/TensorRT-LLM:
tensorrt_llm/sampling_params.py @ 000a01de, SamplingParams; executor/result.py, the results'
`context_logits`; _torch/pyexecutor/py_executor.py, stored versions):
- `SamplingParams(return_context_logits=True)`: the result's `context_logits` is one
  [prompt_len, vocab] float tensor per request. The executor gathers them only for a batch in which
  some request asks (gather_context_logits = any(request.py_return_context_logits ...)): the lm_head
  then runs over every prompt row of those requests, not only the last, and the rows are copied to
  the host (prompt_len x vocab x 4 bytes a request); nothing is set when the LLM is loaded, unlike an
  engine's --gather_context_logits. The gate asks for them in its own batches only.
- `SamplingParams(prompt_logprobs=k)` gives top-k logprobs per prompt token, computed from those same
  context logits: the gate needs the whole distribution (its perplexity and top-1 read every row), so
  it asks for the logits themselves.
- greedy decoding is top_k None or 1 with no top_p (SamplingParams._greedy_decoding); `end_id` left
  None is the tokenizer's eos, so the gate's "no end id" is NO_END_ID, which no token matches;
  `max_tokens` new tokens, the output's `token_ids` without the prompt (exclude_input_from_output).
- `LLM.generate(list of token-id lists, sampling_params)` returns one result per prompt, in order;
  `LLM.generate_async(..., streaming=True)` yields growing outputs; `LLM.shutdown()` frees the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.backends.base import NO_END_ID, EngineInfo
from pipeline.backends.trtllm_pytorch.options import cuda_graph_batch_sizes, options_limits, read_options
from pipeline.core.errors import MissingDependencyError
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.runtime.limits import EngineLimits

if TYPE_CHECKING:
    import torch


def runner_options(options: dict[str, Any], limits: EngineLimits) -> dict[str, Any]:
    """The build's LLM API options for a runner that takes at most limits.max_batch_size requests:
    the batch (and the CUDA graphs captured for it) lowered, the rest as built. Pure."""
    out = {**options, "max_batch_size": limits.max_batch_size}
    if "cuda_graph_config" in options:
        out["cuda_graph_config"] = {
            **options["cuda_graph_config"],
            "batch_sizes": cuda_graph_batch_sizes(limits.max_batch_size),
        }
    return out


def sampling_kwargs(
    *, max_new_tokens: int, end_id: int | None, temperature: float, top_k: int, seed: int
) -> dict[str, Any]:
    """SamplingParams' keywords for the runner API's generate (greedy when temperature is 0). Pure."""
    kwargs: dict[str, Any] = {
        "max_tokens": max_new_tokens,
        "end_id": NO_END_ID if end_id is None else end_id,
        "detokenize": False,
    }
    if temperature == 0:
        kwargs["top_k"] = 1
    else:
        kwargs |= {"temperature": temperature, "top_k": top_k or None, "seed": seed}
    return kwargs


class LlmApiRunner:
    """The unified checkpoint and its options in engine_dir, loaded by tensorrt_llm.LLM."""

    def __init__(
        self, llm: Any, sampling_params: type, limits: EngineLimits, engine_config: dict[str, Any]
    ) -> None:
        self._llm = llm
        self._sampling_params = sampling_params
        self.limits = limits
        self.engine_config = engine_config

    @classmethod
    def load(cls, engine_dir: Path, info: EngineInfo, *, max_batch_size: int | None) -> LlmApiRunner:
        try:
            from tensorrt_llm import LLM, SamplingParams
        except ImportError:
            raise MissingDependencyError(
                "TensorRT-LLM is not installed: a trtllm-pytorch build runs on a GPU host",
                hint=f"run inside {SERVING_CONTAINER.tag} (docker/Dockerfile)",
            ) from None
        limits = options_limits(engine_dir, max_batch_size)
        options = runner_options(read_options(engine_dir), limits)
        from pipeline.runtime.unified import unified_pretrained_config

        llm = LLM(model=str(engine_dir), **options)
        engine_config = {
            "pretrained_config": unified_pretrained_config(engine_dir),
            "llm_api_options": options,
        }
        return cls(llm, SamplingParams, limits, engine_config)

    def context_logits(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        self.limits.check([len(s) for s in sequences])
        params = self._sampling_params(max_tokens=1, return_context_logits=True, detokenize=False)
        results = self._llm.generate(sequences, params)
        return [r.context_logits.cpu() for r in results]

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        end_id: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int = 0,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        self.limits.check([len(p) for p in prompts], max_new_tokens)
        kwargs = sampling_kwargs(
            max_new_tokens=max_new_tokens, end_id=end_id, temperature=temperature, top_k=top_k, seed=seed
        )
        params = self._sampling_params(**kwargs)
        stop = kwargs["end_id"]
        if on_token is None:
            return [_until(r.outputs[0].token_ids, stop) for r in self._llm.generate(prompts, params)]
        new: list[list[int]] = []
        for i, prompt in enumerate(prompts):
            tokens: list[int] = []
            for step in self._llm.generate_async(prompt, params, streaming=True):
                grown = _until(step.outputs[0].token_ids, stop)
                for token in grown[len(tokens) :]:
                    on_token(i, token)
                tokens = grown
            new.append(tokens)
        return new

    def close(self) -> None:
        self._llm.shutdown()


def _until(tokens: list[int], stop: int) -> list[int]:
    tokens = list(tokens)
    return tokens[: tokens.index(stop)] if stop in tokens else tokens
