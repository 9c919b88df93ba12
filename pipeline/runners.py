"""Run what the build stage built, on either target, through one API (gate, bench and smoke use it).

`load_runner(engine_dir)` reads the engine's config.json and build_info.json:
a cpu-reference engine runs on `pipeline.runtime.ReferenceModel` with the
profile's limits; a TensorRT-LLM engine runs on TensorRT-LLM 1.2.1's
`ModelRunnerCpp` (imported on first use), after refusing a GPU architecture
or a TensorRT version other than the ones that built it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.errors import InputError, MissingDependencyError
from pipeline.runtime.limits import RuntimeLimits
from pipeline.trtllm import CONTAINER
from pipeline.trtllm.engine import (
    BUILD_INFO,
    ENGINE_CONFIG,
    EngineInfo,
    read_engine_config,
    read_engine_info,
    supports_chunked_context,
)

if TYPE_CHECKING:
    import torch

# Token ids are never negative: an end id that no token matches.
NO_END_ID = -1


class Runner(Protocol):
    limits: RuntimeLimits
    engine_config: dict[str, Any]

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor: ...

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
    ) -> list[list[int]]: ...


def limits_of(engine_config: dict[str, Any], engine_dir: Path) -> RuntimeLimits:
    """The profile's limits, from the engine's build_config (as TensorRT-LLM's runtime reads them)."""
    build = engine_config["build_config"]
    try:
        return RuntimeLimits(
            max_batch_size=int(build["max_batch_size"]),
            max_input_len=int(build["max_input_len"]),
            max_seq_len=int(build["max_seq_len"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"build_config lacks a valid {exc}", path=engine_dir / ENGINE_CONFIG) from None


def load_runner(engine_dir: Path) -> Runner:
    """A runner for a build artifact's engine/ directory, enforcing the profile's limits."""
    engine_config = read_engine_config(engine_dir)
    info = read_engine_info(engine_dir)
    limits = limits_of(engine_config, engine_dir)
    if info.runtime == "cpu-reference":
        return ReferenceRunner.load(engine_dir, engine_config, limits)
    return TensorRTRunner.load(engine_dir, engine_config, info, limits)


class ReferenceRunner:
    """The cpu-reference engine: the packed checkpoint on the PyTorch reference runtime."""

    def __init__(self, model: Any, engine_config: dict[str, Any]) -> None:
        self.model = model
        self.engine_config = engine_config

    @classmethod
    def load(cls, engine_dir: Path, engine_config: dict[str, Any], limits: RuntimeLimits) -> ReferenceRunner:
        from pipeline.runtime import ReferenceModel
        from pipeline.runtime.checkpoint import load_tensors, parse_checkpoint_config
        from pipeline.runtime.weights import build_weights

        config = parse_checkpoint_config(
            engine_config["pretrained_config"], engine_dir / ENGINE_CONFIG, field_prefix="pretrained_config."
        )
        weights = build_weights(load_tensors(engine_dir), config, engine_dir)
        return cls(ReferenceModel(config, weights, limits), engine_config)

    @property
    def limits(self) -> RuntimeLimits:
        return self.model.limits

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.logits(input_ids)

    def generate(self, prompts: list[list[int]], **options: Any) -> list[list[int]]:
        return self.model.generate(prompts, **options)


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

    def __init__(self, runner: Any, engine_config: dict[str, Any], limits: RuntimeLimits) -> None:
        self._runner = runner
        self.engine_config = engine_config
        self.limits = limits

    @classmethod
    def load(
        cls, engine_dir: Path, engine_config: dict[str, Any], info: EngineInfo, limits: RuntimeLimits
    ) -> TensorRTRunner:
        try:
            import tensorrt
            import torch
            from tensorrt_llm.runtime import ModelRunnerCpp
        except ImportError as exc:
            raise MissingDependencyError(
                f"running a TensorRT-LLM engine needs TensorRT-LLM 1.2.1 ({exc.name} is missing)",
                hint=f"run inside {CONTAINER}",
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
            max_batch_size=limits.max_batch_size,
            max_input_len=limits.max_input_len,
            # Prompts longer than max_num_tokens are split into chunks (needs paged context FMHA).
            enable_chunked_context=supports_chunked_context(engine_config),
        )
        return cls(runner, engine_config, limits)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Context logits [batch, seq, vocab] (float32); the engine is built with --gather_context_logits."""
        self.limits.check([input_ids.shape[1]] * input_ids.shape[0])
        out = self._runner.generate(
            list(input_ids.int()), max_new_tokens=1, end_id=NO_END_ID, pad_id=0, return_dict=True
        )
        return out["context_logits"].float().cpu()

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
        import torch

        self.limits.check([len(p) for p in prompts], max_new_tokens)
        sampling = (
            {"top_k": 1}
            if temperature == 0
            else {"temperature": temperature, "top_k": top_k, "random_seed": seed}
        )
        stop = NO_END_ID if end_id is None else end_id
        outputs = self._runner.generate(
            [torch.tensor(p, dtype=torch.int32) for p in prompts],
            max_new_tokens=max_new_tokens,
            end_id=stop,
            pad_id=0,
            return_dict=True,
            output_sequence_lengths=True,
            streaming=on_token is not None,
            **sampling,
        )
        # Non-streaming returns the final dict; streaming yields growing ones. Either way output_ids
        # hold prompt + new tokens per request, up to sequence_lengths.
        steps = [outputs] if on_token is None else outputs
        new: list[list[int]] = [[] for _ in prompts]
        for step in steps:
            ids, lengths = step["output_ids"], step["sequence_lengths"]
            for i, prompt in enumerate(prompts):
                tokens = ids[i, 0, len(prompt) : int(lengths[i, 0])].tolist()
                if stop in tokens:
                    tokens = tokens[: tokens.index(stop)]
                for token in tokens[len(new[i]) :]:
                    if on_token is not None:
                        on_token(i, token)
                new[i] = tokens
        return new
