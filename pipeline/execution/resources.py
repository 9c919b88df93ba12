"""What a task asks of a node, read off the task, its target and its backend, never set by the user. Pure.

The backend says what each stage's task needs (pipeline.backends: with trtllm-engine, what builds or
runs an engine asks for one GPU of the target's type, calibration one GPU of any type; with the
reference runtime, every task one CPU); this module turns that into Ray's resource names and says
when no node of a cluster can give it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.backends import backend_of
from pipeline.facts.config import PipelineConfig
from pipeline.facts.targets import TARGETS
from pipeline.planning.tasks import Task

# Ray's resource for a node's accelerator type; a task asks for a sliver of it, so any number of
# tasks may share the label while the GPU count limits them (ray/_private/ray_constants.py).
ACCELERATOR_PREFIX = "accelerator_type:"
LABEL_SHARE = 0.001


@dataclass(frozen=True)
class TaskResources:
    cpus: float = 1.0
    gpus: float = 0.0
    accelerator_type: str | None = None

    def demand(self) -> dict[str, float]:
        """As Ray's resource names: what a node must have free for the task to start there."""
        demand = {"CPU": self.cpus}
        if self.gpus:
            demand["GPU"] = self.gpus
        if self.accelerator_type:
            demand[ACCELERATOR_PREFIX + self.accelerator_type] = LABEL_SHARE
        return demand

    def missing_on(self, node: Mapping[str, float]) -> list[str]:
        """The resources (Ray's names) a node with these totals can never give the task."""
        return [name for name, need in self.demand().items() if node.get(name, 0.0) < need]

    def describe(self) -> str:
        """`1 CPU, 1 GPU, accelerator_type:A100`."""
        return ", ".join(_name(name, need) for name, need in self.demand().items())


def _name(resource: str, amount: float) -> str:
    return resource if resource.startswith(ACCELERATOR_PREFIX) else f"{amount:g} {resource}"


def task_resources(config: PipelineConfig, task: Task) -> TaskResources:
    if task.backend is None:  # fetch: whichever backend, a CPU
        return TaskResources(cpus=1)
    return backend_of(config, task.backend).task_resources(task.stage, TARGETS[config.target.gpu])


def unplaceable(resources: TaskResources, nodes: list[Mapping[str, float]]) -> str | None:
    """Why no node of the cluster can ever run a task that needs `resources` (None: one can).
    `nodes`: each live node's total resources."""
    if any(not resources.missing_on(node) for node in nodes):
        return None
    if not nodes:
        return "the Ray cluster has no live node"
    lacking = [resources.missing_on(node) for node in nodes]
    # Name what the most nodes lack (on a tie, the accelerator label: it is what the user must add).
    demand = resources.demand()
    worst = max(reversed(list(demand)), key=lambda r: sum(r in missing for missing in lacking))
    return (
        f"it needs {resources.describe()} and no node of the Ray cluster ({len(nodes)} alive) has "
        f"{_name(worst, demand[worst])}"
    )
