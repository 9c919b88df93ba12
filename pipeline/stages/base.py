"""What every stage module provides, and what it is given when it runs.

A stage module defines:

    NAME: str                 the stage's name ("calibrate")
    VERSION: int              bumped when the artifact's format or semantics change
    TOOLS: tuple[str, ...]    distributions whose versions enter the artifact key
    def config_section(config, task) -> dict   the config (and input-file digests) the output depends on
    def run(ctx: StageContext) -> StageOutcome writes the artifact into ctx.out_dir

and, when its outputs also live outside the store (publish), optionally

    def check_outputs(artifact, trusted) -> list[str]   what is wrong with them (empty: intact)

and, when it updates something many tasks share (build: the engines/ link, the shared timing
cache), optionally

    def after_commit(config: PipelineConfig, store: ArtifactStore, task: Task, artifact: Artifact,
                     reporter: Reporter) -> None

run by the driver only (never a worker), after the task's artifact was committed or found up to
date (never after a failed or rejected one); it is the only place a stage may write something many
tasks share. `run` writes only into ctx.out_dir (and its log): tasks may run at once, elsewhere.
A PipelineError it raises fails the task; the artifact stays committed.

The executor does the rest: keys, verification, skipping, the manifest, the atomic rename.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from pipeline.core.manifest import StatKey
from pipeline.core.reporter import Reporter
from pipeline.core.store import Artifact
from pipeline.facts.config import PipelineConfig, Precision, Profile
from pipeline.planning.tasks import Task


@dataclass(frozen=True)
class RunOptions:
    """Per-invocation switches that are not part of the config (and not of any key)."""

    allow_arch_mismatch: bool = False
    debug: bool = False


@dataclass
class StageContext:
    config: PipelineConfig
    task: Task
    inputs: dict[str, Artifact]  # by input stage name
    out_dir: Path  # the artifact being written (a temp dir until committed)
    work_dir: Path  # where caches shared across artifacts live (the HF download cache, timing caches)
    log: logging.Logger  # goes to the stage's log file
    log_path: Path
    reporter: Reporter
    options: RunOptions = field(default_factory=RunOptions)
    # sha256 the stage computed from the bytes it wrote, by path, so the manifest need not hash them again
    known_sha256: dict[str, str] = field(default_factory=dict)
    # sha256 of the verified input files by stat key: a hard link to one of them is those bytes
    trusted: Mapping[StatKey, str] = field(default_factory=dict)

    @property
    def precision(self) -> Precision:
        assert self.task.precision is not None, f"{self.task.id} has no precision"
        return Precision(self.task.precision)

    @property
    def profile(self) -> Profile:
        assert self.task.profile is not None, f"{self.task.id} has no profile"
        return self.config.profile(self.task.profile)


@dataclass(frozen=True)
class StageOutcome:
    summary: str  # one line for the summary table
    record: BaseModel | dict[str, Any] = field(default_factory=dict)  # goes into manifest.record
    ok: bool = True  # False: the artifact is kept but downstream stages must not use it (failed gate)


class StageModule(Protocol):
    NAME: str
    VERSION: int
    TOOLS: tuple[str, ...]

    def config_section(self, config: PipelineConfig, task: Task) -> dict[str, Any]: ...

    def run(self, ctx: StageContext) -> StageOutcome: ...
