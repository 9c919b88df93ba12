"""The gate engine stage: each precision's checkpoint built once more, for the gate to score.

Built like a served engine (pipeline.stages.build: same preflight, argv and checks) in the
gate's own profile (PipelineConfig.gate_profile: gate.batch_size windows of gate.eval_seq_len
tokens) and with --gather_context_logits, which served engines never carry. It shares the
timing cache as a build does (build.after_commit) but is not linked under engines/ and never
published; see pipeline.planning.tasks for where it sits in the graph.
"""

from __future__ import annotations

import subprocess

from pipeline.core.tools import ToolRunner
from pipeline.stages import build
from pipeline.stages.base import StageContext, StageOutcome

NAME = "gate_engine"
VERSION = build.VERSION
TOOLS = build.TOOLS
config_section = build.config_section
after_commit = build.after_commit


def run(ctx: StageContext, *, runner: ToolRunner = subprocess.run) -> StageOutcome:
    return build.run(ctx, runner=runner)
