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
from pipeline.gate.verdict import GateCheck


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
    if record.candidate_choice_accuracy is not None:
        lines.append(
            f"Multiple choice: reference {record.reference_choice_accuracy:.3f}, candidate "
            f"{record.candidate_choice_accuracy:.3f} over {record.choice_items} items."
        )
    return "\n".join(lines) + "\n"


def render_junit(record: GateResult) -> str:
    suite = ET.Element(
        "testsuite",
        name=f"gate[{record.precision}/{record.profile}]",
        tests=str(len(record.checks)),
        failures=str(len(record.failed)),
        errors="0",
    )
    for check in record.checks:
        case = ET.SubElement(
            suite, "testcase", classname=f"gate.{record.precision}.{record.profile}", name=check.name
        )
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
