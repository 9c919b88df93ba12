"""What gate.tasks costs, before it runs: each task's tokens from its size, over the plan's throughput.

Per model scored (the unquantized one once, then each (backend, precision)'s gate engine once):
- prefill: every loglikelihood request (one per choice) and every generation prompt is one forward pass
  over its tokens, clipped as the adapter clips them (pipeline.gate.lm_adapter: the gate engine's
  max_input_len, and room for the generation budget). Compute-bound: 2 x params FLOPs a token at the
  target's FP16 peak.
- decode: a generation task writes up to max_gen_toks tokens an item (the adapter generates to the
  budget, then cuts at the stop strings), gate.batch_size items a step; a step reads the weights once, at
  the plan's batch-1 decode ceiling.
Both are ceilings a real run does not reach (tensor cores are not all busy; the KV cache is read too),
so the estimate is a floor: the time spent is that at least, typically a few times more.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from pipeline.facts.architecture import Architecture
from pipeline.facts.config import GATE_PROFILE, GateTask, PipelineConfig, Precision
from pipeline.facts.eval_tasks import CHARS_PER_TOKEN, TaskSize
from pipeline.facts.targets import TARGETS
from pipeline.planning.memory import UNQUANTIZED_BYTES, bytes_read_per_token, plan_profile

UNQUANTIZED = "unquantized"


class TaskCost(BaseModel):
    task: str
    data: str  # where its data comes from (pipeline.gate.tasks.describe_data)
    items: int | None  # None: the task's size is not known before its data is read
    requests: int | None  # forward passes over a prompt: one per choice, or one per generation
    prefill_tokens: int | None
    generated_tokens: int | None
    how: str  # where the size comes from


class ModelTime(BaseModel):
    model: str  # "unquantized", or a gate engine's "<backend>/<precision>"
    seconds: float | None  # None: a task's size is unknown
    prefill_tok_s: float
    decode_step_s: float


class TaskGateEstimate(BaseModel):
    target: str
    tasks: list[TaskCost]
    models: list[ModelTime]
    total_s: float | None  # every model; the unquantized scores are reused by every precision
    note: str


def estimate_task_gate(
    config: PipelineConfig,
    arch: Architecture,
    sized: list[tuple[GateTask, str, TaskSize | None]],
    variants: list[tuple[str, Precision]],
) -> TaskGateEstimate:
    """The task gate's time on the config's target: `sized` is each task with its data and size,
    `variants` the (backend, precision) whose gate engines the run scores."""
    target = TARGETS[config.target.gpu]
    profile = config.gate_profile
    batch = profile.max_batch_size
    costs = [
        _cost(task, data, size, profile.max_input_len, profile.max_seq_len) for task, data, size in sized
    ]
    prefill_tok_s = target.fp16_tflops * 1e12 / (2 * arch.params)
    # One decode step per batch of generations per token written.
    steps = [
        math.ceil(_items(task, size) / batch) * _budget(size, profile.max_seq_len)
        for task, _, size in sized
        if size is not None
    ]
    known = all(c.prefill_tokens is not None for c in costs)
    tokens = sum(c.prefill_tokens or 0 for c in costs)

    def timed(model: str, read_per_token: int) -> ModelTime:
        step_s = read_per_token / (target.bandwidth_gb_s * 1e9)
        seconds = tokens / prefill_tok_s + sum(steps) * step_s if known else None
        return ModelTime(model=model, seconds=seconds, prefill_tok_s=prefill_tok_s, decode_step_s=step_s)

    models = [timed(UNQUANTIZED, bytes_read_per_token(arch, arch.params * UNQUANTIZED_BYTES))]
    for backend, precision in variants:
        plan = plan_profile(config, arch, backend, precision, GATE_PROFILE)
        models.append(timed(f"{backend}/{precision.value}", bytes_read_per_token(arch, plan.weight_bytes)))
    total = sum(m.seconds for m in models if m.seconds is not None) if known else None
    return TaskGateEstimate(
        target=target.name,
        tasks=costs,
        models=models,
        total_s=total,
        note=(
            f"a floor at {target.name}'s ceilings ({target.fp16_tflops:g} TFLOPS FP16 for prefill, "
            f"{target.bandwidth_gb_s:g} GB/s for decode), {CHARS_PER_TOKEN:g} characters a token: "
            "a run takes at least this, typically a few times more"
        ),
    )


def _items(task: GateTask, size: TaskSize) -> int:
    """Items lm-eval scores: `limit` from each of a group's tasks (those smaller give all of theirs)."""
    if task.limit is None:
        return size.items
    return min(size.items, size.subtasks * min(task.limit, size.smallest_subtask))


def _budget(size: TaskSize, max_seq_len: int) -> int:
    return min(size.max_gen_toks, max_seq_len - 1)


def _cost(task: GateTask, data: str, size: TaskSize | None, max_input_len: int, max_seq_len: int) -> TaskCost:
    if size is None:
        return TaskCost(
            task=task.name,
            data=data,
            items=None,
            requests=None,
            prefill_tokens=None,
            generated_tokens=None,
            how="size unknown before its data is read",
        )
    items = _items(task, size)
    shots = (task.num_fewshot or 0) + 1
    prompt = math.ceil(shots * size.chars_per_shot / CHARS_PER_TOKEN)
    budget = _budget(size, max_seq_len)
    # The adapter keeps the end of what does not fit: the engine's input, less a generation's budget.
    room = max_input_len if size.choices else min(max_input_len, max_seq_len - budget)
    requests = items * (size.choices or 1)
    return TaskCost(
        task=task.name,
        data=data,
        items=items,
        requests=requests,
        prefill_tokens=requests * min(prompt, room),
        generated_tokens=items * budget,
        how=size.source,
    )
