"""Measures against the precision's thresholds: one check per metric, and the verdict. Pure."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel

from pipeline.core.errors import InputError
from pipeline.facts.config import GateThresholds
from pipeline.gate.evaluate import Measures
from pipeline.gate.tasks import TaskScore


class GateCheck(BaseModel):
    name: str
    value: float
    threshold: float
    direction: Literal["max", "min"]  # max: value must not exceed threshold; min: must reach it
    passed: bool

    @property
    def rule(self) -> str:
        return f"{'<=' if self.direction == 'max' else '>='} {self.threshold:g}"


def _check(name: str, value: float, threshold: float, direction: Literal["max", "min"]) -> GateCheck:
    passed = value <= threshold if direction == "max" else value >= threshold
    return GateCheck(name=name, value=value, threshold=threshold, direction=direction, passed=passed)


def checks_for(
    measures: Measures, thresholds: GateThresholds, *, min_served_greedy_match: float
) -> list[GateCheck]:
    checks = [
        _check(
            "perplexity_increase_pct",
            measures.perplexity_increase_pct,
            thresholds.max_perplexity_increase_pct,
            "max",
        ),
        _check("top1_agreement", measures.top1_agreement, thresholds.min_top1_agreement, "min"),
        _check("greedy_match", measures.greedy_match, thresholds.min_greedy_match, "min"),
        _check("served_greedy_match", measures.served_greedy_match, min_served_greedy_match, "min"),
    ]
    if measures.candidate_choice_accuracy is not None and thresholds.min_multiple_choice_accuracy is not None:
        checks.append(
            _check(
                "multiple_choice_accuracy",
                measures.candidate_choice_accuracy,
                thresholds.min_multiple_choice_accuracy,
                "min",
            )
        )
    return checks


class TaskResult(BaseModel):
    """One gate task: the candidate's score against the unquantized model's, and whether it holds."""

    task: str
    metric: str
    samples: int
    num_fewshot: int | None
    limit: int | None
    reference_score: float
    reference_stderr: float
    score: float
    stderr: float
    recovery: float  # score / reference_score
    recovery_stderr: float
    drop_points: float  # (reference_score - score) x 100
    drop_stderr_points: float
    within_noise: bool  # the drop is no larger than its standard error: the scores are not told apart
    min_recovery: float
    max_drop_points: float | None
    passed: bool


def task_result(
    reference: TaskScore, candidate: TaskScore, *, min_recovery: float, max_drop_points: float | None
) -> TaskResult:
    """The two scores compared. Standard errors combine as for independent estimates (lm-eval reports
    each score's alone): the drop's is sqrt(se_r^2 + se_c^2), the recovery's by the delta method."""
    r, c, se_r, se_c = reference.score, candidate.score, reference.stderr, candidate.stderr
    if r <= 0:
        raise InputError(
            f"the unquantized model scores {r:g} on task '{reference.task}': a recovery against it means nothing",
            hint="gate on tasks the model can do (well above chance)",
        )
    drop, drop_se = (r - c) * 100, math.hypot(se_r, se_c) * 100
    recovery = c / r
    passed = recovery >= min_recovery and (max_drop_points is None or drop <= max_drop_points)
    return TaskResult(
        task=reference.task,
        metric=reference.metric,
        samples=candidate.samples,
        num_fewshot=candidate.num_fewshot,
        limit=candidate.limit,
        reference_score=r,
        reference_stderr=se_r,
        score=c,
        stderr=se_c,
        recovery=recovery,
        recovery_stderr=math.hypot(se_c / r, c * se_r / r**2),
        drop_points=drop,
        drop_stderr_points=drop_se,
        within_noise=drop <= drop_se,
        min_recovery=min_recovery,
        max_drop_points=max_drop_points,
        passed=passed,
    )


def task_checks(result: TaskResult) -> list[GateCheck]:
    """The task's checks in the gate's list: recovery, and the drop in points when a maximum is set."""
    checks = [_check(f"task:{result.task}", result.recovery, result.min_recovery, "min")]
    if result.max_drop_points is not None:
        checks.append(_check(f"task_drop:{result.task}", result.drop_points, result.max_drop_points, "max"))
    return checks
