"""What the gate writes: gate.json (the result), gate.md (a table for people), junit.xml (for CI).

The files hold only what the gate judged, never how long it took or what memory it used: two runs that
judge alike (on another node, by another executor) write the same bytes, so what is keyed on the gate's
content (publish) stays up to date. Timings and memory go in the manifest's record (GateRecord).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from pydantic import BaseModel

from pipeline.core.atomic import write_text_atomic
from pipeline.core.gpu_memory import GpuStepMemory
from pipeline.facts.layout import GATE_JSON, GATE_MD, JUNIT_XML
from pipeline.gate.verdict import GateCheck, TaskResult


class GateResult(BaseModel):
    """The gate's verdict and everything it rests on (gate.json)."""

    verdict: bool
    precision: str
    profile: str
    checks: list[GateCheck]
    reference_perplexity: float
    candidate_perplexity: float
    exact_greedy_matches: int
    served_exact_greedy_matches: int  # prompts the served engine continues exactly as the gate engine
    # Prompts where the served engine first diverged onto a token the gate engine had at a near tie
    # (gate.metrics.NEAR_TIE_FP16_STEPS), counted as agreement in served_greedy_match.
    served_near_ties: int
    reference_choice_accuracy: float | None
    candidate_choice_accuracy: float | None
    windows: int
    window_len: int
    prompts: int
    max_new_tokens: int
    choice_items: int
    batch_size: int  # sequences scored at once (gate.batch_size, capped by each engine)
    data: dict[str, str]  # data file -> sha256
    tasks: list[TaskResult] = []  # gate.tasks: lm-eval scores, the candidate's against the reference's

    @property
    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]

    @property
    def summary(self) -> str:
        if self.verdict:
            return f"passed {len(self.checks)} checks (ppl {self.reference_perplexity:.3f} -> {self.candidate_perplexity:.3f})"
        return "FAILED " + ", ".join(f"{c.name} {c.value:.4g} (needs {c.rule})" for c in self.failed)


class GateRecord(GateResult):
    """The manifest's record: the result, and what the machine spent on it."""

    reference_s: float
    candidate_s: float
    served_s: float
    gpu_memory: list[GpuStepMemory] = []  # each model's step: its peak, and what it left behind

    @property
    def result(self) -> GateResult:
        return GateResult.model_validate(self.model_dump(include=set(GateResult.model_fields)))


def render_markdown(record: GateResult) -> str:
    lines = [
        f"# Accuracy gate: {record.precision} / {record.profile}: {'PASSED' if record.verdict else 'FAILED'}",
        "",
        "| check | value | threshold | result |",
        "| --- | ---: | ---: | --- |",
    ]
    lines += [
        f"| {c.name} | {c.value:.4f} | {c.rule} | {'pass' if c.passed else '**FAIL**'} |"
        for c in record.checks
    ]
    lines += [
        "",
        f"Perplexity: reference {record.reference_perplexity:.4f}, candidate {record.candidate_perplexity:.4f} "
        f"over {record.windows} windows of {record.window_len} tokens.",
        f"Greedy continuations: {record.exact_greedy_matches} of {record.prompts} prompts identical "
        f"({record.max_new_tokens} new tokens).",
        f"Served engine against the gate engine (same checkpoint, with context logits): "
        f"{record.served_exact_greedy_matches} of {record.prompts} continuations identical at batch 1, "
        f"{record.served_near_ties} more first diverging at a near tie of the gate engine's logits.",
    ]
    if record.tasks:
        lines += [
            "",
            "| task | metric | items | unquantized | candidate | recovery | drop (points) | needs | result |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        lines += [
            f"| {t.task} | {t.metric} | {t.samples} | {t.reference_score:.4f} ± {t.reference_stderr:.4f} "
            f"| {t.score:.4f} ± {t.stderr:.4f} | {t.recovery:.4f} ± {t.recovery_stderr:.4f} "
            f"| {t.drop_points:.2f} ± {t.drop_stderr_points:.2f}{' (within noise)' if t.within_noise else ''} "
            f"| {_task_rule(t)} | {'pass' if t.passed else '**FAIL**'} |"
            for t in record.tasks
        ]
    if record.candidate_choice_accuracy is not None:
        lines.append(
            f"Multiple choice: reference {record.reference_choice_accuracy:.3f}, candidate "
            f"{record.candidate_choice_accuracy:.3f} over {record.choice_items} items."
        )
    return "\n".join(lines) + "\n"


def _task_rule(task: TaskResult) -> str:
    rule = f"recovery >= {task.min_recovery:g}"
    return rule if task.max_drop_points is None else f"{rule}, drop <= {task.max_drop_points:g}"


def _task_line(task: TaskResult) -> str:
    noise = "within noise" if task.within_noise else "beyond its standard error"
    return (
        f"{task.task} ({task.metric}, {task.samples} items): {task.score:.4f} ± {task.stderr:.4f} against "
        f"unquantized {task.reference_score:.4f} ± {task.reference_stderr:.4f}; recovery {task.recovery:.4f} "
        f"± {task.recovery_stderr:.4f}, drop {task.drop_points:.2f} ± {task.drop_stderr_points:.2f} points "
        f"({noise}); needs {_task_rule(task)}"
    )


def render_junit(record: GateResult) -> str:
    suite = ET.Element(
        "testsuite",
        name=f"gate[{record.precision}/{record.profile}]",
        tests=str(len(record.checks)),
        failures=str(len(record.failed)),
        errors="0",
    )
    tasks = {f"task:{t.task}": t for t in record.tasks}
    for check in record.checks:
        case = ET.SubElement(
            suite, "testcase", classname=f"gate.{record.precision}.{record.profile}", name=check.name
        )
        task = tasks.get(check.name)
        if task is not None:
            # One testcase per task, carrying every figure the verdict rests on.
            properties = ET.SubElement(case, "properties")
            for name in ("score", "stderr", "reference_score", "reference_stderr", "recovery",
                         "recovery_stderr", "drop_points", "drop_stderr_points", "samples", "within_noise"):  # fmt: skip
                ET.SubElement(properties, "property", name=name, value=str(getattr(task, name)))
            if not task.passed:
                failure = ET.SubElement(case, "failure", message=_task_line(task))
                failure.text = _task_line(task)
            else:
                ET.SubElement(case, "system-out").text = _task_line(task)
            continue
        if not check.passed:
            failure = ET.SubElement(
                case, "failure", message=f"{check.name} = {check.value:.6g}, needs {check.rule}"
            )
            failure.text = f"{check.name}: {check.value:.6g} (threshold {check.rule})"
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_reports(out_dir: Path, record: GateRecord) -> None:
    result = record.result
    write_text_atomic(out_dir / GATE_JSON, result.model_dump_json(indent=2) + "\n")
    write_text_atomic(out_dir / GATE_MD, render_markdown(result))
    write_text_atomic(out_dir / JUNIT_XML, render_junit(result))
