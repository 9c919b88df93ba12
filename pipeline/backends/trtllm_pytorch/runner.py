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
- the runner API's SamplingParams map onto its fields in sampling.py; `end_id` left None is the
  tokenizer's eos, so the gate's "no end id" is NO_END_ID, which no token matches; `max_tokens` new
  tokens, each output's `token_ids` without the prompt (exclude_input_from_output), `n` outputs per
  result, each with `logprobs` (one {token id: Logprob} per token) when asked;
- `LLM.generate(list of token-id lists, sampling_params)` returns one result per prompt, in order,
  sampling_params one for all or a list of one per prompt; `LLM.generate_async(..., streaming=True)`
  yields growing outputs; `LLM.shutdown()` frees the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.backends.base import NO_END_ID, EngineInfo
from pipeline.backends.trtllm_pytorch.options import cuda_graph_batch_sizes, options_limits, read_options
from pipeline.backends.trtllm_pytorch.sampling import llm_api_sampling
from pipeline.core.errors import InputError, MissingDependencyError
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.runtime.limits import EngineLimits
from pipeline.runtime.sampling import GREEDY, SamplingParams

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
        sampling: SamplingParams = GREEDY,
        bad_words: Sequence[Sequence[Sequence[int]]] = (),
        stop_words: Sequence[Sequence[Sequence[int]]] = (),
        log_probs: list[list[float]] | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        copies = sampling.num_return_sequences
        self.limits.check([len(p) for p in prompts for _ in range(copies)], max_new_tokens)
        stop = NO_END_ID if end_id is None else end_id
        params = []
        for i in range(len(prompts)):
            kwargs = llm_api_sampling(
                sampling,
                max_new_tokens=max_new_tokens,
                end_id=stop,
                bad_words=bad_words[i] if bad_words else (),
                stop_words=stop_words[i] if stop_words else (),
                log_probs=log_probs is not None,
            )
            try:
                params.append(self._sampling_params(**kwargs))
            except ValueError as exc:  # SamplingParams._validate's refusals
                raise InputError(f"TensorRT-LLM's SamplingParams refuses these options: {exc}") from None
        new: list[list[int]] = [[] for _ in range(len(prompts) * copies)]
        if log_probs is not None:
            log_probs[:] = [[] for _ in new]

        def take(row: int, output: Any) -> None:
            tokens = _until(output.token_ids, stop)
            fresh = tokens[len(new[row]) :]
            if log_probs is not None:
                positions = output.logprobs[len(new[row]) : len(tokens)]
                log_probs[row] += [_logprob(p, t) for p, t in zip(positions, fresh, strict=True)]
            for token in fresh:
                if on_token is not None:
                    on_token(row, token)
            new[row] = tokens

        if on_token is None:
            for i, result in enumerate(self._llm.generate(prompts, params)):
                for s in range(copies):
                    take(i * copies + s, result.outputs[s])
            return new
        for i, prompt in enumerate(prompts):
            for step in self._llm.generate_async(prompt, params[i], streaming=True):
                for s in range(copies):
                    take(i * copies + s, step.outputs[s])
        return new

    def close(self) -> None:
        self._llm.shutdown()


def _until(tokens: list[int], stop: int) -> list[int]:
    tokens = list(tokens)
    return tokens[: tokens.index(stop)] if stop in tokens else tokens


def _logprob(position: dict[int, Any], token: int) -> float:
    """The returned token's log probability from one position's {token id: Logprob}. logprobs=1 asks
    for the top one, which a sampled token need not be (1.2.x returns the top k, not the sampled
    token besides)."""
    if token not in position:
        raise InputError(
            f"the LLM API gave no log probability for the sampled token {token}: TensorRT-LLM 1.2.x "
            "returns the top-k ones only; ask for log probabilities with greedy decoding"
        )
    return float(position[token].logprob)
