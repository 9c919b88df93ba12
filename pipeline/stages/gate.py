"""The gate stage: the precision's gate engine against the unquantized Hugging Face model, then the
served engine against the gate engine.

Inputs: fetch (model/: the reference and its tokenizer), gate_engine (engine/: the
checkpoint built with --gather_context_logits, whose logits are scored) and build
(engine/: the served engine, checked by greedy agreement), both run through
pipeline.backends.load_runner whichever backend built them, gate.batch_size sequences at a time. Writes gate.json,
gate.md and junit.xml; the outcome's ok is the verdict, so the executor keeps a
failed gate's artifact but blocks publish behind it, and the CLI exits 1.

With gate.tasks, both the unquantized model and the gate engine are also scored on lm-evaluation-harness
tasks (pipeline.gate.tasks). Those scores are kept in the work dir's task-scores/ under a key of their
inputs: the unquantized model's (the fetched model, the tasks and their data, the gate engine's
limits) are computed once for every precision, a gate engine's once for every profile.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pipeline.core.hashing import sha256_file
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig, Precision
from pipeline.gate.tasks import task_inputs
from pipeline.planning.tasks import Task
from pipeline.stages.base import Stage, StageContext, StageOutcome

if TYPE_CHECKING:
    from pipeline.gate import TaskGate
    from pipeline.runtime.limits import EngineLimits


class Gate(Stage):
    """The precision's gate engine against the unquantized model, then the served engine against the gate engine."""

    name = "gate"
    version = 5  # 4: prompts continued at batch 1, near ties counted; 5: gate.tasks scored
    tools = ("torch", "transformers", "tensorrt-llm", "lm_eval")

    def config_section(self, config: PipelineConfig, task: Task) -> dict[str, Any]:
        gate = config.gate
        files = {
            "eval_dataset": gate.eval_dataset,
            "prompts": gate.prompts,
            "multiple_choice": gate.multiple_choice,
        }
        return {
            "gate": gate.model_dump(mode="json", exclude={"thresholds", "task_dir", *files}),
            # Only this precision's thresholds: tuning another precision's must not rerun this gate.
            "thresholds": gate.thresholds[Precision(task.precision)].model_dump(mode="json"),
            # The sets' contents, not where the checkout lies, decide the result.
            "data_sha256": {
                field: sha256_file(path) if path is not None and path.is_file() else None
                for field, path in files.items()
            },
            # Each task's data: its files' sha256 (gate.task_dir) or the hub data set's revision.
            "task_data": task_inputs(gate.tasks, gate.task_dir) if gate.tasks else {},
        }

    def run(self, ctx: StageContext) -> StageOutcome:
        from transformers import AutoTokenizer

        from pipeline.backends import engine_limits, load_runner
        from pipeline.gate import HuggingFaceModel, run_gate, write_reports

        model_dir = layout.model_dir(ctx.inputs["fetch"].path)
        gate_engine = layout.engine_dir(ctx.inputs["gate_engine"].path)
        served = layout.engine_dir(ctx.inputs["build"].path)
        batch = ctx.config.gate.batch_size
        limits = engine_limits(gate_engine)
        record = run_gate(
            reference=lambda: HuggingFaceModel.load(model_dir),
            # The runtime's batch (and on a GPU its KV cache) sized to the gate's batch, not the engine's.
            candidate=lambda: load_runner(gate_engine, max_batch_size=batch),
            served=lambda: load_runner(served, max_batch_size=batch),
            tokenizer=AutoTokenizer.from_pretrained(model_dir),
            settings=ctx.config.gate,
            thresholds=ctx.config.gate.thresholds[ctx.precision],
            limits=limits,
            served_limits=engine_limits(served),
            precision=ctx.precision.value,
            profile=ctx.profile.name,
            reporter=ctx.reporter,
            tasks=self._task_gate(ctx, limits) if ctx.config.gate.tasks else None,
        )
        write_reports(ctx.out_dir, record)
        for check in record.checks:
            ctx.log.info(
                "%s = %.6g (%s): %s", check.name, check.value, check.rule, "pass" if check.passed else "FAIL"
            )
        return StageOutcome(summary=record.summary, record=record, ok=record.verdict)

    def _task_gate(self, ctx: StageContext, limits: EngineLimits) -> TaskGate:
        from pipeline.execution.driver import tool_version
        from pipeline.gate import ScoreCache, TaskGate

        gate = ctx.config.gate
        common = {
            "tasks": [t.model_dump(mode="json") for t in gate.tasks],
            "task_data": task_inputs(gate.tasks, gate.task_dir),
            "limits": dataclasses.asdict(limits),
            "batch_size": gate.batch_size,
            "lm_eval": tool_version("lm_eval"),
            "gate_version": self.version,
        }
        folder = layout.task_scores_dir(ctx.work_dir)
        return TaskGate(
            tasks=gate.tasks,
            task_dir=gate.task_dir,
            datasets_cache=layout.datasets_cache_dir(ctx.work_dir),
            min_recovery=gate.min_task_recovery(ctx.precision),
            max_drop_points=gate.thresholds[ctx.precision].max_task_drop_points,
            reference_scores=ScoreCache.keyed(folder, {**common, "model": ctx.inputs["fetch"].key}),
            candidate_scores=ScoreCache.keyed(folder, {**common, "model": ctx.inputs["gate_engine"].key}),
        )
