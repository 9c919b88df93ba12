"""The stages, in the graph's order: the one registry the task graph, the driver and the dry run read.

    fetch -> calibrate -> build, gate_engine -> gate -> publish

Each is a `pipeline.stages.base.Stage`; tests pass their own mapping where a stage is replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pipeline.planning.tasks import STAGE_ORDER
from pipeline.stages.base import Stage
from pipeline.stages.build import Build
from pipeline.stages.calibrate import Calibrate
from pipeline.stages.fetch import Fetch
from pipeline.stages.gate import Gate
from pipeline.stages.gate_engine import GateEngine
from pipeline.stages.publish import Publish

STAGES: Mapping[str, Stage] = MappingProxyType(
    {stage.name: stage for stage in (Fetch(), Calibrate(), Build(), GateEngine(), Gate(), Publish())}
)
# The task graph (pipeline.planning.tasks) orders tasks by stage; it must list exactly these.
assert tuple(STAGES) == STAGE_ORDER, (tuple(STAGES), STAGE_ORDER)
