"""The gate stage: the precision's gate engine against the unquantized Hugging Face model, then the
served engine against the gate engine.

Inputs: fetch (model/: the reference and its tokenizer), gate_engine (engine/: the
checkpoint built with --gather_context_logits, whose logits are scored) and build
(engine/: the served engine, checked by greedy agreement), both run through
pipeline.backends.load_runner whichever backend built them, gate.batch_size sequences at a time. Writes gate.json,
gate.md and junit.xml; the outcome's ok is the verdict, so the executor keeps a
failed gate's artifact but blocks publish behind it, and the CLI exits 1.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.hashing import sha256_file
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.planning.tasks import Task
from pipeline.stages.base import Stage, StageContext, StageOutcome


class Gate(Stage):
    """The precision's gate engine against the unquantized model, then the served engine against the gate engine."""

    name = "gate"
    version = 4  # 4: prompts continued at batch 1, near ties counted (served_near_ties)
    tools = ("torch", "transformers", "tensorrt-llm")

    def config_section(self, config: PipelineConfig, task: Task) -> dict[str, Any]:
        gate = config.gate
        files = {
            "eval_dataset": gate.eval_dataset,
            "prompts": gate.prompts,
            "multiple_choice": gate.multiple_choice,
        }
        return {
            "gate": gate.model_dump(mode="json", exclude={"thresholds", *files}),
            # Only this precision's thresholds: tuning another precision's must not rerun this gate.
            "thresholds": gate.thresholds[Precision(task.precision)].model_dump(mode="json"),
            # The sets' contents, not where the checkout lies, decide the result.
            "data_sha256": {
                field: sha256_file(path) if path is not None and path.is_file() else None
                for field, path in files.items()
            },
        }

    def run(self, ctx: StageContext) -> StageOutcome:
        from transformers import AutoTokenizer

        from pipeline.backends import engine_limits, load_runner
        from pipeline.gate import HuggingFaceModel, run_gate, write_reports

        model_dir = layout.model_dir(ctx.inputs["fetch"].path)
        gate_engine = layout.engine_dir(ctx.inputs["gate_engine"].path)
        served = layout.engine_dir(ctx.inputs["build"].path)
        batch = ctx.config.gate.batch_size
        record = run_gate(
            reference=lambda: HuggingFaceModel.load(model_dir),
            # The runtime's batch (and on a GPU its KV cache) sized to the gate's batch, not the engine's.
            candidate=lambda: load_runner(gate_engine, max_batch_size=batch),
            served=lambda: load_runner(served, max_batch_size=batch),
            tokenizer=AutoTokenizer.from_pretrained(model_dir),
            settings=ctx.config.gate,
            thresholds=ctx.config.gate.thresholds[ctx.precision],
            limits=engine_limits(gate_engine),
            served_limits=engine_limits(served),
            precision=ctx.precision.value,
            profile=ctx.profile.name,
            reporter=ctx.reporter,
        )
        write_reports(ctx.out_dir, record)
        for check in record.checks:
            ctx.log.info(
                "%s = %.6g (%s): %s", check.name, check.value, check.rule, "pass" if check.passed else "FAIL"
            )
        return StageOutcome(summary=record.summary, record=record, ok=record.verdict)
