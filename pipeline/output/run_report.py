"""Machine-readable run reports (versioned JSON, JUnit XML), written atomically."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from pipeline.core.atomic import write_text_atomic
from pipeline.execution.results import RunReport, TaskResult, TaskState

REPORT_VERSION = 1
LOG_TAIL_LINES = 40


def task_row(result: TaskResult) -> dict[str, Any]:
    return {
        "task": result.task.id,
        "stage": result.task.stage,
        **result.task.variant_dict,
        "state": result.state.value,
        "key": result.key,
        "reason": result.reason,
        "summary": result.summary,
        "duration_s": round(result.duration_s, 3),
        "path": str(result.path) if result.path else None,
        "node": result.node or None,
        "warnings": result.warnings,
        "log": str(result.log) if result.log else None,
    }


def write_run_report(path: Path, report: RunReport) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "report_version": REPORT_VERSION,
        "ok": report.error is None and not report.rejected,
        "error": report.error.message if report.error else None,
        "exit_code": int(report.error.exit_code) if report.error else (1 if report.rejected else 0),
        "tasks": [task_row(r) for r in report.results],
    }
    write_text_atomic(path, json.dumps(body, indent=2) + "\n")
    return path


def write_run_junit(path: Path, report: RunReport) -> Path:
    """One testcase per task, so a CI system shows which stage of which variant failed."""
    failures = {TaskState.rejected: "failure", TaskState.failed: "error", TaskState.blocked: "skipped"}
    suite = ET.Element("testsuite", name="trtllm-pipeline", tests=str(len(report.results)))
    counts = dict.fromkeys(failures.values(), 0)
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"pipeline.{result.task.stage}",
            name=result.task.id,
            time=f"{result.duration_s:.3f}",
        )
        kind = failures.get(result.state)
        if kind:
            counts[kind] += 1
            ET.SubElement(case, kind, message=result.summary or result.reason)
        if result.state is TaskState.failed and result.log is not None and result.log.is_file():
            # The failed task's log (written on whichever node ran it), so CI shows why.
            lines = result.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            ET.SubElement(case, "system-out").text = "\n".join([f"log: {result.log}", *lines])
    suite.set("failures", str(counts["failure"]))
    suite.set("errors", str(counts["error"]))
    suite.set("skipped", str(counts["skipped"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, ET.tostring(suite, encoding="unicode") + "\n")
    return path
