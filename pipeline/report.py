"""Machine-readable run report (versioned JSON), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.executor import RunReport
from pipeline.store import write_text_atomic

REPORT_VERSION = 1


def write_run_report(path: Path, report: RunReport) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "report_version": REPORT_VERSION,
        "ok": report.error is None and not report.rejected,
        "error": report.error.message if report.error else None,
        "exit_code": int(report.error.exit_code) if report.error else (1 if report.rejected else 0),
        "tasks": [
            {
                "task": r.task.id,
                "stage": r.task.stage,
                **r.task.variant_dict,
                "state": r.state.value,
                "key": r.key,
                "reason": r.reason,
                "summary": r.summary,
                "duration_s": round(r.duration_s, 3),
                "path": str(r.path) if r.path else None,
            }
            for r in report.results
        ],
    }
    write_text_atomic(path, json.dumps(body, indent=2) + "\n")
    return path
