"""`trtllm-pipeline plan`: the memory and speed plan of each profile on the config's target and
others (pure arithmetic, no GPU)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from pipeline.commands.checks import check_work_dir
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.store import ArtifactStore
from pipeline.facts.config import PipelineConfig
from pipeline.facts.targets import TARGETS
from pipeline.planning.memory import ProfilePlan, find_architecture, fit_error, plan_config
from pipeline.stages.build import fetched_model_dir


class PlanReport(BaseModel):
    model: str
    architecture: str  # where the shapes come from
    plans: list[ProfilePlan]
    _error: ConfigError | None = None

    @property
    def error(self) -> ConfigError | None:
        """The first profile that does not fit a target asked for: the build refuses it on the
        config's own target, and the plan says so of every target (for CI)."""
        return self._error


def plan(config: PipelineConfig, work_dir: Path, targets: Sequence[str] = ()) -> PlanReport:
    """Plans for the config's target and each of `targets`."""
    check_work_dir(work_dir, writes=False)
    for name in targets:
        if name not in TARGETS:
            raise InputError(f"--target {name}: unknown target; known: {', '.join(TARGETS)}")
    try:  # the built-in table or the tiny spec: no store look-up, so the plan stays instant
        arch = find_architecture(config)
    except InputError:  # an unknown hub model: its fetched config.json, if fetched already
        arch = find_architecture(config, fetched_model_dir(config, ArtifactStore(work_dir)))
    plans = plan_config(config, arch, tuple(dict.fromkeys([config.target.gpu, *targets])))
    report = PlanReport(model=config.model.name, architecture=arch.source, plans=plans)
    unfit = next((p for p in plans if not p.fits), None)
    if unfit is not None:
        report._error = fit_error(config, unfit)
    return report
