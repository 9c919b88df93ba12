"""The task graph: which stage runs for which variant, on which inputs. Pure.

A variant is (backend, precision, profile): the backend is a config [[backends]] name, the runtime
the artifacts are for; fetch is shared by all.

fetch -> calibrate[b/precision] -> build[b/precision/profile] -> gate[b/precision/profile]
                                                              \\-> publish[b/precision/profile] (needs gate too)
                                \\-> gate_engine[b/precision/gate] -> gate[b/precision/*]

A gate engine is the precision's checkpoint built with --gather_context_logits (served
engines are not): the gate scores it against the reference, then each served engine against
it by greedy agreement. It is never published.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.facts.config import GATE_PROFILE, PipelineConfig

STAGE_ORDER = ("fetch", "calibrate", "build", "gate_engine", "gate", "publish")
# The stages that run trtllm-build (served engines, and the gate's own engine).
ENGINE_STAGES = frozenset({"build", "gate_engine"})


@dataclass(frozen=True)
class Task:
    stage: str
    backend: str | None = None
    precision: str | None = None
    profile: str | None = None
    inputs: tuple[Task, ...] = ()

    @property
    def variant(self) -> tuple[str, ...]:
        return tuple(v for v in (self.backend, self.precision, self.profile) if v is not None)

    @property
    def variant_dict(self) -> dict[str, str]:
        out = {}
        if self.backend is not None:
            out["backend"] = self.backend
        if self.precision is not None:
            out["precision"] = self.precision
        if self.profile is not None:
            out["profile"] = self.profile
        return out

    @property
    def id(self) -> str:
        return f"{self.stage}[{'/'.join(self.variant)}]" if self.variant else self.stage

    def input(self, stage: str) -> Task:
        return next(t for t in self.inputs if t.stage == stage)


def plan_tasks(config: PipelineConfig) -> list[Task]:
    """Every task of the pipeline in a topological order."""
    fetch = Task("fetch")
    tasks = [fetch]
    for backend, precision in config.variants:
        p = precision.value
        calibrate = Task("calibrate", backend, p, inputs=(fetch,))
        gate_engine = Task("gate_engine", backend, p, GATE_PROFILE, inputs=(fetch, calibrate))
        tasks += [calibrate, gate_engine]
        for profile in config.profiles:
            build = Task("build", backend, p, profile.name, inputs=(fetch, calibrate))
            gate = Task("gate", backend, p, profile.name, inputs=(fetch, gate_engine, build))
            publish = Task("publish", backend, p, profile.name, inputs=(fetch, build, gate))
            tasks += [build, gate, publish]
    return sorted(tasks, key=lambda t: STAGE_ORDER.index(t.stage))


def select_tasks(
    tasks: list[Task],
    stages: set[str],
    *,
    precisions: set[str] | None = None,
    profiles: set[str] | None = None,
    backends: set[str] | None = None,
) -> list[Task]:
    """The tasks of `stages` (filtered by variant) and everything they depend on, in order."""

    def wanted(task: Task) -> bool:
        return (
            task.stage in stages
            and (not backends or task.backend is None or task.backend in backends)
            and (not precisions or task.precision is None or task.precision in precisions)
            and (not profiles or task.profile is None or task.profile in profiles)
        )

    needed: set[Task] = set()
    stack = [t for t in tasks if wanted(t)]
    while stack:
        task = stack.pop()
        if task not in needed:
            needed.add(task)
            stack.extend(task.inputs)
    return [t for t in tasks if t in needed]
