"""What a stage is, and what it is given when it runs.

A stage is a `Stage` subclass, listed once in `pipeline.stages.STAGES` (the registry the task
graph, the driver and the dry run read). It sets

    name        the stage's name ("calibrate")
    version     bumped when the artifact's format or semantics change
    tools       distributions whose versions enter the artifact key

and defines `config_section(config, task)` (the config, and input-file digests, the output depends
on) and `run(ctx)` (writes the artifact into ctx.out_dir). Two hooks do nothing unless a stage
needs them:

    check_outputs(artifact, trusted)   what is wrong with its outputs outside the store (publish)
    after_commit(config, store, task, artifact, reporter)
                                       what it shares with other tasks (build: the engines/ link, the
                                       shared timing cache)

after_commit runs in the driver only (never a worker), after the task's artifact was committed or
found up to date (never after a failed or rejected one); it is the only place a stage may write
something many tasks share. `run` writes only into ctx.out_dir (and its log): tasks may run at
once, elsewhere. A PipelineError after_commit raises fails the task; the artifact stays committed.

The driver does the rest: keys, verification, skipping, the manifest, the atomic rename.
"""

from __future__ import annotations

import logging
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from pipeline.core.manifest import StatKey
from pipeline.core.reporter import Reporter
from pipeline.core.store import Artifact, ArtifactStore
from pipeline.core.tools import ToolRunner
from pipeline.facts.config import PipelineConfig, Precision, Profile
from pipeline.planning.tasks import Task

if TYPE_CHECKING:
    from pipeline.backends.base import Backend


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
    # How the stage runs external tools (pipeline.core.tools.run_tool's runner); tests replace the process.
    tools: ToolRunner = subprocess.run

    @property
    def backend(self) -> Backend:
        """The runtime that plays the task's backend on the config's target."""
        from pipeline.backends import backend_of

        assert self.task.backend is not None, f"{self.task.id} has no backend"
        return backend_of(self.config, self.task.backend)

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


class Stage(ABC):
    """One stage of the pipeline; see the module's docstring."""

    name: ClassVar[str]
    version: ClassVar[int]
    tools: ClassVar[tuple[str, ...]]

    @abstractmethod
    def config_section(self, config: PipelineConfig, task: Task) -> dict[str, Any]: ...

    @abstractmethod
    def run(self, ctx: StageContext) -> StageOutcome: ...

    def check_outputs(self, artifact: Artifact, trusted: Mapping[StatKey, str]) -> list[str]:
        """What is wrong with the stage's outputs outside the store (empty: intact, or none)."""
        return []

    def after_commit(
        self, config: PipelineConfig, store: ArtifactStore, task: Task, artifact: Artifact, reporter: Reporter
    ) -> None:
        """What the stage shares with other tasks, written by the driver (nothing by default)."""
        return None
