"""The `reference-pytorch` backend: the reference runtime (pipeline.runtime) playing TensorRT-LLM's
PyTorch backend on the CPU, so that the demo and CI run that path end to end with no GPU.

What it plays: calibrate exports ModelOpt's unified Hugging Face checkpoint for it (as for
trtllm-pytorch), its build puts that checkpoint's files in engine/ with the profile's LLM API options
(the file trtllm-pytorch's build writes), and its runner reads the checkpoint the way the PyTorch
backend's linear layers do (pipeline.runtime.unified) and enforces the options' limits. What
differs from `reference` (which plays the engine path) is only that: the checkpoint and the options;
the rest is the same runtime, and the same serving on the CPU (publish sees the options and writes the
PyTorch backend's release, served by the CPU stand-ins of the llmapi model and trtllm-serve).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends.base import BuildPaths, EngineBuild, EngineInfo, EngineRunner
from pipeline.backends.reference import ReferenceBackend

if TYPE_CHECKING:
    from pipeline.planning.memory import ProfilePlan
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
        from pipeline.backends.trtllm_pytorch.pack import pack_unified

        return pack_unified(ctx, paths, plan)

    def load_runner(self, engine_dir: Path, info: EngineInfo, *, max_batch_size: int | None) -> EngineRunner:
        from pipeline.backends.trtllm_pytorch.pack import UnifiedReferenceRunner

        return UnifiedReferenceRunner.load(engine_dir, max_batch_size=max_batch_size)
