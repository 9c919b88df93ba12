"""Measures against the precision's thresholds: one check per metric, and the verdict. Pure."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from pipeline.facts.config import GateThresholds
from pipeline.gate.evaluate import Measures


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
