"""A TensorRT-LLM 1.2.1 engine through `ModelRunnerCpp` (imported on first use), with the runner API.

It refuses a GPU architecture or a TensorRT version other than the ones that
built the engine before loading it. Context logits come back as TensorRT-LLM
returns them: one `[len_i, vocab]` tensor per sequence, on the host and still
in the engine's logits dtype, so whoever widens them to float32 does it on the
CPU, a slice at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.backends.base import BUILD_INFO, NO_END_ID, EngineInfo, by_length
from pipeline.backends.trtllm_engine.engine import ENGINE_CONFIG, supports_chunked_context
from pipeline.core.errors import InputError, MissingDependencyError
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.runtime.limits import EngineLimits
from pipeline.runtime.sampling import GREEDY, SamplingParams

if TYPE_CHECKING:
    import torch


def runner_options(
    engine_config: dict[str, Any], limits: EngineLimits, *, size_kv_cache_to_batch: bool
) -> dict[str, Any]:
    """Keyword arguments of ModelRunnerCpp.from_dir (TensorRT-LLM 1.2.x) for this engine and these limits."""
    options: dict[str, Any] = {
        "max_batch_size": limits.max_batch_size,
        "max_input_len": limits.max_input_len,
        # Prompts longer than max_num_tokens are split into chunks (needs paged context FMHA).
        "enable_chunked_context": supports_chunked_context(engine_config),
    }
    if size_kv_cache_to_batch:
        # Left alone the KV cache takes 0.9 of the free memory, and the context logits the gate asks
        # for ((batch, max_input_len, vocab) on the GPU) find none. With max_tokens the executor takes
        # the smaller of the two (executor.h, KvCacheConfig::mMaxTokens): exactly what this batch needs.
        options["max_tokens_in_paged_kv_cache"] = limits.max_batch_size * limits.max_seq_len
    return options


def runtime_mismatches(info: EngineInfo, tensorrt_version: str, gpu_sms: list[int]) -> list[str]:
    """Why an engine cannot run here: TensorRT deserializes only its own version's engines, for the SM
    that built them ("stdVersionRead == kSERIALIZATION_VERSION", "expecting compute 8.6 got compute 8.0")."""
    problems = []
    if info.tensorrt_version != tensorrt_version:
        problems.append(
            f"the engine was built with TensorRT {info.tensorrt_version}, this host has TensorRT {tensorrt_version}"
        )
    if not gpu_sms:
        problems.append("no CUDA GPU is visible")
    elif gpu_sms[0] != info.sm:
        problems.append(f"the engine was built on sm{info.sm} ({info.gpu_name}), this GPU is sm{gpu_sms[0]}")
    return problems


class TensorRTRunner:
    """A TensorRT-LLM 1.2.1 engine through ModelRunnerCpp, with the reference runner's API."""

    def __init__(
        self, runner: Any, engine_config: dict[str, Any], limits: EngineLimits, *, engine_dir: Path
    ) -> None:
        self._runner = runner
        self.engine_config = engine_config
        self.limits = limits
        self.engine_dir = engine_dir

    @classmethod
    def load(
        cls,
        engine_dir: Path,
        engine_config: dict[str, Any],
        info: EngineInfo,
        limits: EngineLimits,
        *,
        size_kv_cache_to_batch: bool = False,
    ) -> TensorRTRunner:
        try:
            import tensorrt
            import torch
            from tensorrt_llm.runtime import ModelRunnerCpp
        except ImportError as exc:
            raise MissingDependencyError(
                f"running a TensorRT-LLM engine needs TensorRT-LLM {SERVING_CONTAINER.tensorrt_llm} "
                f"({exc.name} is missing)",
                hint=f"run inside {SERVING_CONTAINER.tag}",
            ) from None
        sms = [
            major * 10 + minor
            for major, minor in map(torch.cuda.get_device_capability, range(torch.cuda.device_count()))
        ]
        problems = runtime_mismatches(info, tensorrt.__version__, sms)
        if problems:
            raise InputError(
                problems[0],
                path=engine_dir / BUILD_INFO,
                hint="rebuild the engine on this GPU type, in the container that runs it",
            )
        runner = ModelRunnerCpp.from_dir(
            engine_dir=str(engine_dir),
            rank=0,
            **runner_options(engine_config, limits, size_kv_cache_to_batch=size_kv_cache_to_batch),
        )
        return cls(runner, engine_config, limits, engine_dir=engine_dir)

    def context_logits(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Per-sequence context logits; the engine is built with --gather_context_logits (a gate engine)."""
        import torch

        self.limits.check([len(s) for s in sequences])

        def run(batch: list[list[int]]) -> list[torch.Tensor]:
            out = self._runner.generate(
                [torch.tensor(s, dtype=torch.int32) for s in batch],
                max_new_tokens=1,
                end_id=NO_END_ID,
                pad_id=0,
                return_dict=True,
            )
            if "context_logits" not in out:
                raise InputError(
                    "the engine returns no context logits: it was built without --gather_context_logits",
                    path=self.engine_dir / ENGINE_CONFIG,
                    hint="score the precision's gate engine (build[<precision>/gate]), not a served one",
                )
            # A list of [len_i, vocab] GPU tensors: each goes to the host as it is, before anything
            # widens it (a float32 copy on the GPU would double the largest allocation of the gate).
            return [logits.to("cpu") for logits in out.pop("context_logits")]

        return by_length(sequences, run)

    def close(self) -> None:
        # The executor holds the engine and the KV cache outside torch; shutdown() frees them
        # (ModelRunnerCpp.executor, a bindings.executor.Executor: pybind/executor/executor.cpp).
        self._runner.executor.shutdown()

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
        import torch

        copies = sampling.num_return_sequences
        self.limits.check([len(p) for p in prompts for _ in range(copies)], max_new_tokens)
        stop = NO_END_ID if end_id is None else end_id
        outputs = self._runner.generate(
            [torch.tensor(p, dtype=torch.int32) for p in prompts],
            max_new_tokens=max_new_tokens,
            end_id=stop,
            pad_id=0,
            return_dict=True,
            output_sequence_lengths=True,
            streaming=on_token is not None,
            **generate_options(
                sampling, bad_words=bad_words, stop_words=stop_words, log_probs=log_probs is not None
            ),
        )
        # Non-streaming returns the final dict; streaming yields growing ones. Either way output_ids
        # [batch, sequences, len] hold prompt + new tokens per returned sequence, up to sequence_lengths;
        # log_probs [batch, sequences, len] the new tokens' (model_runner_cpp.py _fill_output).
        steps = [outputs] if on_token is None else outputs
        rows = [(i, s) for i in range(len(prompts)) for s in range(copies)]
        new: list[list[int]] = [[] for _ in rows]
        if log_probs is not None:
            log_probs[:] = [[] for _ in rows]
        for step in steps:
            # All of them live on the GPU: one copy each per step, not small ones per request.
            ids, lengths = step["output_ids"].cpu(), step["sequence_lengths"].cpu()
            step_log_probs = step["log_probs"].cpu() if log_probs is not None else None
            for row, (i, s) in enumerate(rows):
                tokens = ids[i, s, len(prompts[i]) : int(lengths[i, s])].tolist()
                if stop in tokens:
                    tokens = tokens[: tokens.index(stop)]
                fresh = tokens[len(new[row]) :]
                if step_log_probs is not None:
                    # the whole call's, or a streamed step's: its own new tokens' (executor responses)
                    log_probs[row] += step_log_probs[i, s, : len(fresh)].tolist()
                for token in fresh:
                    if on_token is not None:
                        on_token(row, token)
                new[row] = tokens
        return new


def generate_options(
    sampling: SamplingParams,
    *,
    bad_words: Sequence[Sequence[Sequence[int]]] = (),
    stop_words: Sequence[Sequence[Sequence[int]]] = (),
    log_probs: bool = False,
) -> dict[str, Any]:
    """ModelRunnerCpp.generate's keyword arguments (TensorRT-LLM 1.2.x) for these options.

    Every sampling option is passed, none left to a default: generate builds the executor's
    SamplingConfig from the ones among its accepted names (it renames num_beams to beam_width and
    random_seed to seed, and drops top_p 0.0), and a name it does not know is dropped without a word,
    so the names here are upstream's exactly (tests/test_build.py pins them). Word lists go per
    request: one list of token sequences per prompt, or None for none at all.
    """
    penalties = sampling.penalties
    options: dict[str, Any] = {
        "num_beams": sampling.beam_width,
        "num_return_sequences": sampling.num_return_sequences,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "random_seed": sampling.seed,
        "repetition_penalty": penalties.repetition,
        "presence_penalty": penalties.presence,
        "frequency_penalty": penalties.frequency,
        "min_tokens": penalties.min_tokens,
        "length_penalty": sampling.length_penalty,
        "output_log_probs": log_probs,
    }
    for name, words in (("bad_words_list", bad_words), ("stop_words_list", stop_words)):
        if any(words):
            options[name] = [[list(word) for word in row] for row in words]
    return options
