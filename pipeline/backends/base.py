"""The backend seam: what the pipeline asks of a runtime, and the records a runtime leaves behind.

A backend is one runtime that runs a precision on a target: `trtllm-engine` (TensorRT-LLM 1.2.1
engines, `trtllm-build`, Triton's C++ tensorrtllm backend), `trtllm-pytorch` (its PyTorch backend, the
LLM API over a Hugging Face checkpoint), and on the CPU the reference runtime (pipeline.runtime)
playing either (`reference`, `reference-pytorch`) in CI and the demo. A task names the backend it is
for (Task.backend, a config [[backends]] name); the stages, commands and executor hold the `Backend`
that plays it on the target (pipeline.backends.backend_of) and ask it; none asks which runtime it is.

Every backend writes an engine/ folder with `build_info.json` (EngineInfo), which names the backend
that built it: whoever loads the engine later (gate, bench, smoke, the served Python model) is sent
to that backend by it, whatever config is in hand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from pipeline.core.errors import InputError
from pipeline.facts import layout
from pipeline.facts.container import DEFAULT_PORTS, ServePorts, ServingContainer
from pipeline.facts.layout import CheckpointKind
from pipeline.facts.targets import LEGACY_CPU_TARGET

if TYPE_CHECKING:
    import torch

    from pipeline.bench.machine import GpuClocks
    from pipeline.bench.memory import MemoryProbe
    from pipeline.core.tools import ToolRunner
    from pipeline.execution.resources import TaskResources
    from pipeline.facts.architecture import Architecture
    from pipeline.facts.config import PipelineConfig
    from pipeline.facts.formats import FormatGap, Precision
    from pipeline.facts.targets import Target
    from pipeline.planning.memory import ProfilePlan
    from pipeline.planning.tasks import Task
    from pipeline.runtime.limits import EngineLimits
    from pipeline.runtime.sampling import SamplingParams
    from pipeline.stages.base import RunOptions, StageContext

BUILD_INFO = "build_info.json"
# Token ids are never negative: an end id that no token matches.
NO_END_ID = -1


class EngineInfo(BaseModel):
    """build_info.json: which backend built the engine, for which target, on what (GPU, versions)."""

    model_config = ConfigDict(frozen=True)
    backend: str  # a name in pipeline.backends.BACKENDS: the one that loads it
    target: str
    gpu_name: str | None = None
    sm: int | None = None  # of the GPU that built it
    tensorrt_llm_version: str | None = None
    tensorrt_version: str | None = None
    cuda_version: str | None = None
    torch_version: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _named_by_runtime(cls, data: Any) -> Any:
        """Engines built before backends had names (still served, and smoked, from published versions)
        record `runtime` and the CPU's old target name instead."""
        if not isinstance(data, dict) or "runtime" not in data or "backend" in data:
            return data
        renamed = {"tensorrt-llm": "trtllm-engine", LEGACY_CPU_TARGET: "reference"}
        data = {k: v for k, v in data.items() if k != "runtime"} | {
            "backend": renamed.get(data["runtime"], data["runtime"])
        }
        if data.get("target") == LEGACY_CPU_TARGET:
            data["target"] = "cpu"
        return data


def read_engine_info(engine_dir: Path) -> EngineInfo:
    path = engine_dir / BUILD_INFO
    try:
        return EngineInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{BUILD_INFO} is missing: the engine's backend, GPU and versions are unknown",
            path=engine_dir,
            hint="rebuild it with `trtllm-pipeline build`",
        ) from None
    except ValidationError as exc:
        raise InputError(f"unreadable ({exc.error_count()} errors)", path=path) from None


def checkpoint_sha256(ctx: StageContext, name: str) -> str:
    """A calibrated checkpoint file's sha256, from the calibrate manifest (the executor verified it)."""
    rel = f"{layout.CHECKPOINT}/{name}"
    calibrate = ctx.inputs["calibrate"]
    entry = next((f for f in calibrate.manifest.files if f.path == rel), None)
    if entry is None:
        raise InputError("not in the calibrate manifest", path=calibrate.path / rel, hint="rerun calibrate")
    return entry.sha256


def write_engine_info(engine_dir: Path, info: EngineInfo) -> None:
    (engine_dir / BUILD_INFO).write_text(info.model_dump_json(indent=2) + "\n")


@dataclass(frozen=True)
class BuildPaths:
    """Where one build reads and writes: the build stage's (a temp artifact) or the dry run's (the
    artifact it would commit). Both hand them to the same argv builder."""

    checkpoint: Path  # the calibrated checkpoint
    out_dir: Path  # the build artifact
    work_dir: Path  # what builds share (timing caches)

    @property
    def engine_dir(self) -> Path:
        return layout.engine_dir(self.out_dir)


class EngineBuild(BaseModel):
    """What a backend's build wrote and how; the build stage's manifest record extends it."""

    engine: EngineInfo
    command: list[str]  # the external command that built it (empty: nothing external ran)
    timing_cache: str | None = None  # the build's own timing cache, relative to the artifact
    network_files: list[str] = []  # a network graph for viewing, relative to the artifact


class PlannedFile(BaseModel):
    """A file a run would write for a command to read (the LLM API options), shown whole by the dry run."""

    path: str
    text: str


class PlannedCommand(BaseModel):
    """An external command a run would execute (the dry run shows it; nothing runs it from here)."""

    purpose: str
    argv: list[str]
    notes: list[str] = []
    files: list[PlannedFile] = []


class TritonServing(BaseModel):
    """How publish renders a backend's engine into the Triton repository's tensorrt_llm model, and
    what serves that repository."""

    model_config = ConfigDict(frozen=True)
    # tensorrtllm: Triton's C++ TensorRT-LLM backend; python: the project's Python model (same tensors).
    triton_backend: Literal["tensorrtllm", "python"]
    # The engine folder the model reads (gpt_model_path): where the server sees the published version.
    engine_dir: str
    serve_with: str  # the container tag, or the tritonserver bundled with this project's install
    container: ServingContainer | None  # whose TensorRT-LLM and TensorRT the engine must match
    mount_path: str | None  # where the container mounts a published version (None: served in place)

    @property
    def served_here(self) -> bool:
        """Served by the tritonserver bundled with this install (`serve` starts it); otherwise by the
        container, whose command `serve` prints."""
        return self.container is None


class EngineRunner(Protocol):
    """A loaded engine behind one API, whichever backend built it (gate, bench and smoke drive it)."""

    limits: EngineLimits
    engine_config: dict[str, Any]

    def context_logits(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """One [len(sequence), vocab] tensor per sequence, on the CPU, in the runtime's logits dtype."""
        ...

    def close(self) -> None:
        """Release the runtime's device memory now (before the next model loads)."""
        ...

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        end_id: int | None = None,
        sampling: SamplingParams = ...,
        bad_words: Sequence[Sequence[Sequence[int]]] = (),
        stop_words: Sequence[Sequence[Sequence[int]]] = (),
        log_probs: list[list[float]] | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """New tokens of sampling.num_return_sequences rows per prompt, prompt by prompt (greedy when
        sampling is left out: pipeline.runtime.sampling.GREEDY). end_id ends a row and is not
        returned; a completed stop word (per prompt, token sequences) ends it and is; a bad word (per
        prompt) is never completed. `log_probs`, when given, receives one list per row: each returned
        token's log probability. on_token(row, token) sees each token as it is chosen."""
        ...


def by_length(
    sequences: list[list[int]], run: Callable[[list[list[int]]], list[torch.Tensor]]
) -> list[torch.Tensor]:
    """run() over the sequences grouped by length, results back in the sequences' order.

    TensorRT-LLM's ModelRunnerMixin._prepare_outputs cuts the padded (batch, max_len, vocab) context
    logits into per-request tensors by cumulative input lengths after flattening them (with packed
    input): right only when every sequence in a call has the same length.
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for i, sequence in enumerate(sequences):
        groups[len(sequence)].append(i)
    out: list[Any] = [None] * len(sequences)
    for indices in groups.values():
        for i, logits in zip(indices, run([sequences[i] for i in indices]), strict=True):
            out[i] = logits
    return out


class Backend(Protocol):
    """One runtime: everything the pipeline does differently for it, and nothing else.

    A backend module imports nothing heavy at the top (the config loader and the plan consult the
    registry); its methods import their implementation when called. Adding a backend is one module
    with a class that has these members, and one entry in pipeline.backends.BACKENDS.

    TensorRT-LLM's PyTorch backend maps onto these methods so: `build` writes its "engine" (the
    unified checkpoint with the LLM API options beside it) with build_info.json, `limits` reads the
    options, `load_runner` opens them with the LLM API, `format_problem` reads its own column of the
    format table. Its consumers (Triton's llmapi model, trtllm-serve) are not the five-model
    tensorrtllm repository `serving` describes: that one grows a repository kind with it.
    """

    name: str  # what build_info.json records (and the old single-backend form's `target.backend`)
    description: str
    # The GPU runtime whose artifacts it makes: the config's [[backends]] name (itself on a GPU; the
    # reference runtimes play one on the CPU).
    plays: str
    # What calibrate exports for it (pipeline.facts.layout): the TensorRT-LLM checkpoint, or ModelOpt's
    # unified Hugging Face checkpoint.
    checkpoint: CheckpointKind

    # --- the config ---------------------------------------------------------------------------

    def unavailable_on(self, target: Target) -> str | None:
        """Why this backend cannot run on `target`, or None. Config load refuses such a pair, and the
        first backend of the registry that can run on a target is that target's default."""
        ...

    def format_problem(self, precision: Precision, kv_cache_dtype: str, target: Target) -> FormatGap | None:
        """Why this backend cannot run the precision with this KV cache on `target`, or None: config
        load refuses the format (naming the precision or the KV cache field), and the plan marks the
        profile as not fitting."""
        ...

    # --- where its tasks run ---------------------------------------------------------------------

    def task_resources(self, stage: str, target: Target) -> TaskResources:
        """What a task of `stage` asks of a cluster node (the Ray executor; never set by the user)."""
        ...

    # --- build (the build and gate_engine stages) ---------------------------------------------

    def preflight(
        self,
        config: PipelineConfig,
        plans: list[ProfilePlan],
        options: RunOptions,
        *,
        work_dir: Path,
        log_path: Path,
        pending: Callable[[], bool],
        runner: ToolRunner,
    ) -> None:
        """Before any stage runs: refuse (exit 3) a host that cannot build `plans` (empty when the
        model's shape is not known yet), so a run fails in seconds rather than after calibration.
        pending() says whether any build would run at all (it reads the store: call it only if
        there is something to check)."""
        ...

    def build(self, ctx: StageContext, paths: BuildPaths, plan: ProfilePlan) -> EngineBuild:
        """Write paths.engine_dir (with build_info.json) for ctx's profile from the calibrated
        checkpoint, check it, and say what ran (external tools run through ctx.tools). Only
        ctx.out_dir and the task's log are written."""
        ...

    def planned_build(
        self, config: PipelineConfig, task: Task, arch: Architecture | None, paths: BuildPaths
    ) -> list[PlannedCommand]:
        """The external commands `build` would run for `task` (the dry run), from the same argv
        builder with the same arguments. arch is None when the model's shape is not known yet."""
        ...

    def after_build(self, config: PipelineConfig, work_dir: Path, artifact: Path, built: EngineBuild) -> None:
        """After the driver committed a build (or found it up to date): update what this backend's
        builds share under work_dir (a TensorRT timing cache). Never run by a worker."""
        ...

    # --- run (gate, bench, smoke) -------------------------------------------------------------

    def limits(self, engine_dir: Path) -> EngineLimits:
        """The limits its build gave the engine in engine_dir (an engine's build_config, or the LLM API
        options): what every runner of it enforces."""
        ...

    def load_runner(self, engine_dir: Path, info: EngineInfo, *, max_batch_size: int | None) -> EngineRunner:
        """The engine in engine_dir, loaded, enforcing its profile's limits. max_batch_size lowers the
        batch the runtime takes (the gate scores in small batches) and sizes its KV cache to it."""
        ...

    def model_config(self, engine_dir: Path) -> dict[str, Any]:
        """The model the build in engine_dir holds, in TensorRT-LLM's pretrained_config names
        (architecture, vocab_size, hidden_size...), read without loading it: what its runners'
        engine_config["pretrained_config"] holds."""
        ...

    # --- serve (publish, smoke, the dry run) --------------------------------------------------

    def container(self, config: PipelineConfig) -> str | None:
        """The image this backend's builds run in and its repositories are served by (None: none)."""
        ...

    def serving(self, config: PipelineConfig) -> TritonServing:
        """What publish renders for this backend's engines, and what serves the repository."""
        ...

    def serve_command(
        self,
        config: PipelineConfig,
        precision: str,
        profile: str,
        repository: Path,
        ports: ServePorts = DEFAULT_PORTS,
    ) -> PlannedCommand:
        """The command that serves a published version at `repository` (the dry run and `serve` print it)."""
        ...

    # --- bench --------------------------------------------------------------------------------

    def bench_runtime(self) -> str:
        """What runs its builds in bench's process, with its version: each row of the report names it
        beside the harness that timed it."""
        ...

    def bench_host_facts(self) -> dict[str, str]:
        """The host facts its figures depend on, beside the platform's (the GPU, or torch's threads)."""
        ...

    def bench_plan_applies(self) -> bool:
        """Whether the plan's bandwidth ceilings and memory estimate (a model of the target GPU)
        describe what this backend's engines run on, so that bench sets its figures beside them."""
        ...

    def bench_gpu_clocks(self) -> tuple[GpuClocks, ...]:
        """The clocks of the GPUs this backend runs on, now (empty: it runs on none)."""
        ...

    def memory_probe(self, *, served: bool) -> MemoryProbe | None:
        """What measures the engine's peak memory in this process, or while a server runs it (None:
        nothing this process can see)."""
        ...
