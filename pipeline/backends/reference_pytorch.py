"""The `reference-pytorch` backend: the reference runtime (pipeline.runtime) playing TensorRT-LLM's
PyTorch backend on the CPU, so that the demo and CI run that path end to end with no GPU.

What it plays: calibrate exports ModelOpt's unified Hugging Face checkpoint for it (as for
trtllm-pytorch), its build puts that checkpoint's files in engine/ with the profile's LLM API options
(the file trtllm-pytorch's build writes), and its runner reads the checkpoint the way the PyTorch
backend's linear layers do (pipeline.runtime.unified) and enforces the options' limits. What
differs from `reference` (which plays the engine path) is only that: the checkpoint and the options;
the rest is the same runtime, and the same CPU serving (publish sees the options and writes the PyTorch
backend's release, served by the CPU stand-ins of the llmapi model and trtllm-serve).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.backends.base import (
    BuildPaths,
    EngineBuild,
    EngineInfo,
    EngineRunner,
    write_engine_info,
)
from pipeline.backends.reference import ReferenceBackend, ReferenceRunner, verify_forward

if TYPE_CHECKING:
    from pipeline.planning.memory import ProfilePlan
    from pipeline.runtime.limits import EngineLimits
    from pipeline.stages.base import StageContext


class ReferencePytorchBackend(ReferenceBackend):
    name = "reference-pytorch"
    description = (
        "the PyTorch reference runtime on the CPU playing trtllm-pytorch (the unified Hugging Face "
        "checkpoint and its LLM API options; CI and demo)"
    )
    plays = "trtllm-pytorch"
    checkpoint = "hf-unified"

    def build(self, ctx: StageContext, paths: BuildPaths, plan: ProfilePlan) -> EngineBuild:
        """What trtllm-pytorch's build writes (the checkpoint and the options in engine/), checked by a
        forward pass here instead of a load by TensorRT-LLM."""
        import torch

        from pipeline.backends.trtllm_pytorch.build import place_checkpoint
        from pipeline.runtime.unified import unified_config

        place_checkpoint(ctx, paths, plan)
        info = EngineInfo(backend=self.name, target=ctx.config.target.gpu, torch_version=torch.__version__)
        write_engine_info(paths.engine_dir, info)
        verify_forward(ctx, paths.engine_dir, unified_config(paths.engine_dir).vocab_size)
        return EngineBuild(engine=info, command=[])

    def limits(self, engine_dir: Path) -> EngineLimits:
        from pipeline.backends.trtllm_pytorch.options import options_limits

        return options_limits(engine_dir)

    def load_runner(self, engine_dir: Path, info: EngineInfo, *, max_batch_size: int | None) -> EngineRunner:
        return load_unified_runner(engine_dir, max_batch_size=max_batch_size)

    def model_config(self, engine_dir: Path) -> dict[str, Any]:
        from pipeline.runtime.unified import unified_pretrained_config

        return unified_pretrained_config(engine_dir)


def load_unified_runner(engine_dir: Path, *, max_batch_size: int | None) -> ReferenceRunner:
    """The unified checkpoint in engine_dir on the reference runtime, read as the PyTorch backend reads
    it (pipeline.runtime.unified), enforcing its LLM API options' limits."""
    from pipeline.backends.trtllm_pytorch.options import options_limits, read_options
    from pipeline.runtime import ReferenceModel
    from pipeline.runtime.unified import load_unified, unified_pretrained_config
    from pipeline.runtime.weights import build_weights

    limits = options_limits(engine_dir, max_batch_size)
    config, tensors = load_unified(engine_dir)
    model = ReferenceModel(config, build_weights(tensors, config, engine_dir), limits)
    # Who reads engine_config reads the model's shape from pretrained_config (as in an engine's config.json).
    engine_config: dict[str, Any] = {
        "pretrained_config": unified_pretrained_config(engine_dir),
        "llm_api_options": read_options(engine_dir),
    }
    return ReferenceRunner(model, engine_config)
