"""Stand-ins for the stages publish reads (fetch, calibrate, build, gate), writing the artifact layout contract.

They write exactly what the real stages leave for publish: fetch's model/ (tokenizer
files), build's engine/ (config.json, weights, build_info.json), gate's gate.json.
`engine_dir_for` makes a real reference-backend engine folder from a checkpoint, for the
tests that serve one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fake_stages import StandIn

from pipeline.backends.base import EngineInfo, write_engine_info
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import execute
from pipeline.facts.config import PipelineConfig, load_config
from pipeline.planning.tasks import plan_tasks, select_tasks
from pipeline.stages.base import StageOutcome
from pipeline.stages.publish import Publish

REPO_ROOT = Path(__file__).resolve().parent.parent
# The embedded default's target line (the CPU: the reference runtime plays each backend), its PyTorch
# backend's entry, and the same config on an A100 with the engine backend alone.
CPU_TARGET = 'gpu = "cpu"\n'
PYTORCH_BACKEND = '[[backends]]\nname = "trtllm-pytorch"\nprecisions = ["int8_wo"]\n'
ENGINE_ONLY = {PYTORCH_BACKEND: ""}
ON_A100 = {CPU_TARGET: 'gpu = "a100-40gb"\n', **ENGINE_ONLY}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def config_with(tmp_path: Path, **replacements: str) -> PipelineConfig:
    """The embedded tiny config, publishing under tmp_path, with text replacements."""
    text = (REPO_ROOT / "pipeline" / "defaults" / "tiny.toml").read_text()
    text = text.replace('destination = "model_repository"', f'destination = "{tmp_path / "published"}"')
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return load_config(path)


def cpu_engine_info() -> EngineInfo:
    return EngineInfo(backend="reference", target="cpu", torch_version="2.13.0")


def a100_engine_info(**changes) -> EngineInfo:
    info = EngineInfo(
        backend="trtllm-engine",
        target="a100-40gb",
        gpu_name="NVIDIA A100-SXM4-40GB",
        sm=80,
        tensorrt_llm_version="1.2.1",
        tensorrt_version="10.14.1.48",
        cuda_version="13.0",
    )
    return info.model_copy(update=changes)


def write_engine(
    engine_dir: Path, *, pretrained: dict, limits: dict, info: EngineInfo, weights: Path | bytes
):
    engine_dir.mkdir(parents=True)
    version = info.tensorrt_llm_version or "trtllm-pipeline (reference)"
    config = {"version": version, "pretrained_config": pretrained, "build_config": limits}
    (engine_dir / "config.json").write_text(json.dumps(config, indent=2))
    name = "rank0.engine" if info.backend == "trtllm-engine" else "rank0.safetensors"
    if isinstance(weights, Path):
        shutil.copyfile(weights, engine_dir / name)
    else:
        (engine_dir / name).write_bytes(weights)
    write_engine_info(engine_dir, info)


@dataclass
class Upstream:
    """What the stand-ins write; tests change a field to make one input bad."""

    tokenizer_dir: Path | None = None  # None: small placeholder tokenizer files
    checkpoint_dir: Path | None = None  # None: placeholder weights (publish never loads them)
    engine_info: EngineInfo = field(default_factory=cpu_engine_info)
    gate_ok: bool = True
    gate_report: str | None = None  # gate.json's text (None: a stand-in verdict, not a full gate report)
    engine_edit: Callable[[Path], None] | None = None  # makes the built engine folder bad, as a build might
    runs: list[str] = field(default_factory=list)

    def _fetch(self, ctx) -> dict:
        model = ctx.out_dir / "model"
        model.mkdir()
        for name in TOKENIZER_FILES:
            if self.tokenizer_dir is None:
                (model / name).write_text(json.dumps({"placeholder": name}))
            elif (self.tokenizer_dir / name).is_file():
                shutil.copyfile(self.tokenizer_dir / name, model / name)
        return {"source": "tiny", "repo_id": None, "commit": "0" * 40, "files": []}

    def _build(self, ctx) -> dict:
        profile = ctx.profile
        limits = {
            "max_batch_size": profile.max_batch_size,
            "max_input_len": profile.max_input_len,
            "max_seq_len": profile.max_seq_len,
        }
        if self.checkpoint_dir is None:
            pretrained, weights = {"architecture": "MistralForCausalLM"}, b"engine bytes " * 64
        else:
            pretrained = json.loads((self.checkpoint_dir / "config.json").read_text())
            weights = self.checkpoint_dir / "rank0.safetensors"
        write_engine(
            ctx.out_dir / "engine",
            pretrained=pretrained,
            limits=limits,
            info=self.engine_info,
            weights=weights,
        )
        if self.engine_edit is not None:
            self.engine_edit(ctx.out_dir / "engine")
        return {"target": self.engine_info.target}

    def _gate(self, ctx) -> dict:
        verdict = {"ok": self.gate_ok, "precision": ctx.precision.value, "profile": ctx.profile.name}
        (ctx.out_dir / "gate.json").write_text(self.gate_report or json.dumps(verdict))
        (ctx.out_dir / "gate.md").write_text("# gate\n")
        return verdict

    def stages(self):
        def stage(name, write, ok=lambda: True):
            def run(ctx):
                self.runs.append(ctx.task.id)
                record = write(ctx) if write else {}
                return StageOutcome(summary=f"stand-in {ctx.task.id}", record=record, ok=ok())

            section = lambda config, task: {"info": self.engine_info.model_dump(mode="json")}  # noqa: E731
            return StandIn(name, run, section)

        return {
            "fetch": stage("fetch", self._fetch),
            "calibrate": stage("calibrate", None),
            "build": stage("build", self._build),
            "gate_engine": stage("gate_engine", None),
            "gate": stage("gate", self._gate, ok=lambda: self.gate_ok),
            "publish": Publish(),
        }


def run_publish(
    config: PipelineConfig,
    work_dir: Path,
    upstream: Upstream,
    *,
    backend: str = "trtllm-engine",
    precision: str = "int8_sq",
    profile: str = "latency",
    force: bool = False,
    reporter: RecordingReporter | None = None,
):
    tasks = select_tasks(
        plan_tasks(config), {"publish"}, precisions={precision}, profiles={profile}, backends={backend}
    )
    return execute(
        config,
        ArtifactStore(work_dir),
        tasks,
        reporter=reporter or RecordingReporter(),
        stages=upstream.stages(),
        force_stages=frozenset({"publish"}) if force else frozenset(),
    )


class _SignalsWaiting(RecordingReporter):
    """Sets `waiting` when publish reports that it waits for another publish's lock."""

    def __init__(self, waiting) -> None:
        super().__init__()
        self.waiting = waiting

    def info(self, message: str) -> None:
        super().info(message)
        if "waiting for another publish" in message:
            self.waiting.set()


def publish_in_process(config_path: str, work_dir: str, profile: str, waiting, results) -> None:
    """One variant's pipeline up to publish in its own work dir, for tests that start several of these
    processes at once (multiprocessing, spawn) against one destination. A publish places its first
    file only once another is waiting for the destination's lock (5 s at most), so they surely
    contend; puts (work_dir, error, version, created, messages) on `results`."""
    from pipeline.serving import release

    place, placed = release.link_or_copy, []

    def place_once_contended(src, dst, sha256):
        if not placed:
            waiting.wait(timeout=5)
        placed.append(dst)
        return place(src, dst, sha256)

    release.link_or_copy = place_once_contended
    reporter = _SignalsWaiting(waiting)
    report = run_publish(
        load_config(Path(config_path)), Path(work_dir), Upstream(), profile=profile, reporter=reporter
    )
    published = next(r for r in report.results if r.task.stage == "publish")
    record = ArtifactStore(Path(work_dir)).get("publish", published.task.variant, published.key)
    version = record.manifest.record["version"] if record is not None else None
    created = record.manifest.record["created"] if record is not None else None
    error = report.error.message if report.error is not None else None
    results.put((work_dir, error, version, created, reporter.text()))
