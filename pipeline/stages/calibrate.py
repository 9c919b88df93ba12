"""The calibrate stage: the fetched model -> a verified checkpoint per backend and precision.

Writes ctx.out_dir/checkpoint, of the kind the task's backend reads (pipeline.facts.layout: the
TensorRT-LLM checkpoint, or ModelOpt's unified Hugging Face checkpoint); the record is a
CalibrationRecord (precision, versions, data set and sha256, timings, per-layer
activation ranges, config repairs) and the step's GPU memory: calibration runs in
this process, so it must give its GPU memory back before the build (pipeline.core.gpu_memory).
"""

from __future__ import annotations

from typing import Any

from pipeline.backends import backend_of
from pipeline.calibration.records import CalibrationRecord
from pipeline.core.gpu_memory import GpuStepMemory, gpu_step
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.facts.formats import kv_cache_format, reads_calibration_data
from pipeline.planning.tasks import Task
from pipeline.stages.base import Stage, StageContext, StageOutcome


class CalibrateRecord(CalibrationRecord):
    """manifest.record of a calibrate artifact."""

    gpu_memory: list[GpuStepMemory]


class Calibrate(Stage):
    """The fetched model quantized by ModelOpt and exported as a verified TensorRT-LLM checkpoint, per precision."""

    name = "calibrate"
    # 2: a backend's variant: the TensorRT-LLM checkpoint or the unified Hugging Face one.
    version = 2
    tools = ("nvidia-modelopt", "torch", "transformers", "safetensors")

    def config_section(self, config: PipelineConfig, task: Task) -> dict[str, Any]:
        precision = Precision(task.precision)
        kv = config.quantization.kv_cache_dtype
        # The KV cache this precision really gets (fp8 always has its own).
        assert task.backend is not None, f"{task.id} has no backend"
        section: dict[str, Any] = {
            # Which checkpoint the backend reads (the task's slot names the backend already).
            "checkpoint": backend_of(config, task.backend).checkpoint,
            "precision": precision.value,
            "kv_cache_dtype": kv_cache_format(precision, kv).name,
        }
        if reads_calibration_data(precision, kv):
            calibration = config.calibration
            section["calibration"] = calibration.model_dump(mode="json")
            section["instruct"] = config.model.instruct
            # The data's content, not its path, decides the output: an edited file reruns.
            section["dataset_sha256"] = _sha256_or_none(calibration.dataset)
        return section

    def run(self, ctx: StageContext) -> StageOutcome:
        from pipeline.calibration import export_checkpoint

        memory: list[GpuStepMemory] = []
        with gpu_step("calibration", memory, stage=self.name):
            exported = export_checkpoint(
                layout.model_dir(ctx.inputs["fetch"].path),
                ctx.precision,
                ctx.config.calibration,
                layout.checkpoint_dir(ctx.out_dir),
                reporter=ctx.reporter,
                log=ctx.log,
                instruct=ctx.config.model.instruct,
                kv_cache_dtype=ctx.config.quantization.kv_cache_dtype,
                checkpoint=ctx.backend.checkpoint,
            )
        record = CalibrateRecord(**exported.model_dump(), gpu_memory=memory)
        run = record.calibration
        data = f"{run.samples} samples x {run.seq_len} tokens" if run else "no calibration"
        repaired = f", repaired {', '.join(r.field for r in record.repairs)}" if record.repairs else ""
        summary = (
            f"{record.quant_algo or record.export_dtype}, {data}, "
            f"{record.calibration_s + record.export_s:.1f}s on {record.device}{repaired}"
        )
        return StageOutcome(summary=summary, record=record)


def _sha256_or_none(path) -> str | None:
    from pipeline.core.hashing import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None  # run() names the missing file
