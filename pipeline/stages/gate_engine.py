"""The gate engine stage: each precision's checkpoint built once more, for the gate to score.

Built like a served engine (pipeline.stages.build: same preflight, argv and checks) in the
gate's own profile (PipelineConfig.gate_profile: gate.batch_size windows of gate.eval_seq_len
tokens) and with --gather_context_logits, which served engines never carry. It shares the
timing cache as a build does (Build.after_commit) but is not linked under engines/ and never
published; see pipeline.planning.tasks for where it sits in the graph.
"""

from __future__ import annotations

from pipeline.stages.build import Build


class GateEngine(Build):
    """A build in the gate's profile, with context logits; its own stage so it has its own key and slot."""

    name = "gate_engine"
