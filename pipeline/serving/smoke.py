"""The smoke check: serve a published repository on a real tritonserver and compare its text with the reference.

Every prompt goes through the ensemble (POST /generate); the first also
streams through the ensemble and through the BLS model (/generate_stream).
Each answer must equal the greedy answer the reference runtime gives for the
same engine, tokenized and detokenized as the serving models do.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.errors import InputError, IntegrityError, MissingDependencyError, StageError
from pipeline.reporting import Reporter
from pipeline.serving.client import generate, generate_stream
from pipeline.serving.render import CONFIG_NAME, parse_model_config
from pipeline.serving.repository import ENGINE_SUBDIR, TOKENIZER_SUBDIR
from pipeline.serving.server import TritonInstall, TritonServer

ROUTES = ("ensemble/generate", "ensemble/generate_stream", "tensorrt_llm_bls/generate_stream")


@dataclass(frozen=True)
class SmokeCheck:
    route: str  # <model>/<endpoint>
    prompt: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.got == self.expected


@dataclass
class SmokeReport:
    repository: Path
    startup_s: float = 0.0
    checks: list[SmokeCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[SmokeCheck]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict:
        return {
            "repository": str(self.repository),
            "version": self.repository.resolve().name,
            "startup_s": round(self.startup_s, 2),
            "ok": self.ok,
            "checks": [{**asdict(c), "ok": c.ok} for c in self.checks],
        }


def _config(repository: Path, model: str):
    path = repository / model / CONFIG_NAME
    if not path.is_file():
        raise StageError(
            "smoke", f"{repository} is not a published model repository (no {model}/{CONFIG_NAME})"
        )
    return parse_model_config(path.read_text(), str(path), expected_name=model)


def reference_answers(repository: Path, prompts: list[str], max_tokens: int) -> list[str]:
    """The reference runtime's greedy answers, tokenized and decoded exactly as the serving models do."""
    from transformers import AutoTokenizer

    from pipeline.runners import load_runner
    from pipeline.serving.models.textcodec import PieceDecoder

    add_special = _config(repository, "preprocessing").parameters["add_special_tokens"].string_value == "true"
    tokenizer = AutoTokenizer.from_pretrained(repository / TOKENIZER_SUBDIR)
    runner = load_runner(repository / ENGINE_SUBDIR)
    decoder = PieceDecoder(tokenizer)
    answers = []
    for prompt in prompts:  # one at a time, as the server runs each request
        ids = tokenizer.encode(prompt, add_special_tokens=add_special)
        (tokens,) = runner.generate([ids], max_new_tokens=max_tokens, end_id=tokenizer.eos_token_id)
        answers.append(decoder.decode(list(tokens)[:max_tokens]))
    return answers


def run_smoke(
    repository: Path,
    prompts: list[str],
    *,
    max_tokens: int,
    work_dir: Path,
    reporter: Reporter,
    install: TritonInstall | None = None,
) -> SmokeReport:
    """Start tritonserver on `repository`, ask it `prompts`, compare with the reference, stop it."""
    backend = _config(repository, "tensorrt_llm").backend
    if backend != "python":
        raise MissingDependencyError(
            f"{repository}: its tensorrt_llm model needs the '{backend}' backend, which the bundled "
            "tritonserver lacks",
            hint="serve GPU repositories in the container named in publish-manifest.json",
        )
    reporter.info(f"reference answers from {repository / ENGINE_SUBDIR}")
    expected = reference_answers(repository, prompts, max_tokens)
    report = SmokeReport(repository)
    started = time.perf_counter()
    served = serving_view(repository, work_dir / "repository")
    with TritonServer(served, work_dir=work_dir, install=install) as server:
        report.startup_s = time.perf_counter() - started
        reporter.info(
            f"tritonserver ready at {server.url} in {report.startup_s:.1f}s (log: {server.log_path})"
        )
        report.checks = ask_server(server.url, prompts, expected, max_tokens=max_tokens)
    return report


def ask_server(url: str, prompts: list[str], expected: list[str], *, max_tokens: int) -> list[SmokeCheck]:
    """Every prompt through the ensemble; the first also streamed through the ensemble and the BLS model."""
    checks = []
    for prompt, want in zip(prompts, expected, strict=True):
        answer = generate(url, "ensemble", {"text_input": prompt, "max_tokens": max_tokens})
        checks.append(SmokeCheck(ROUTES[0], prompt, want, answer["text_output"]))
    for route in ROUTES[1:]:
        model = route.split("/")[0]
        payload = {"text_input": prompts[0], "max_tokens": max_tokens, "stream": True}
        pieces = [event["text_output"] for event in generate_stream(url, model, payload)]
        checks.append(SmokeCheck(route, prompts[0], expected[0], "".join(pieces)))
    return checks


def published_repository(config: PipelineConfig, precision: str, profile: str) -> Path:
    """The current published version of a variant (what `publish` last released)."""
    from pipeline.serving.release import CURRENT
    from pipeline.stages.publish import variant_destination

    path = variant_destination(config, precision, profile) / CURRENT
    if not path.is_dir():
        raise InputError(
            "nothing published for this variant",
            path=path,
            hint=f"run `trtllm-pipeline publish --precision {precision} --profile {profile}` first",
        )
    return path


def smoke_published(
    config: PipelineConfig,
    *,
    work_dir: Path,
    reporter: Reporter,
    precisions: set[str] | None = None,
    profiles: set[str] | None = None,
    prompts: int = 2,
    max_tokens: int | None = None,
) -> list[SmokeReport]:
    """Smoke every published variant the filters select, one server at a time."""
    from pipeline.datasets.jsonl import load_texts

    texts = load_texts(config.gate.prompts, limit=prompts).texts
    reports = []
    for precision in config.quantization.precisions:
        for profile in config.profiles:
            if (precisions and precision.value not in precisions) or (
                profiles and profile.name not in profiles
            ):
                continue
            repository = published_repository(config, precision.value, profile.name)
            require_intact(repository, "refusing to serve it")
            reporter.info(f"smoke {precision.value}/{profile.name}: serving {repository.resolve()}")
            reports.append(
                run_smoke(
                    repository,
                    texts,
                    max_tokens=max_tokens or config.gate.max_new_tokens,
                    work_dir=work_dir / "smoke" / precision.value / profile.name,
                    reporter=reporter,
                )
            )
            require_intact(repository, "the server wrote into it")
    return reports


def serving_view(repository: Path, folder: Path) -> Path:
    """`folder`, made afresh: hard links to (or verified copies of) every file of the published version,
    in folders of its own. The Python backend writes `__pycache__` beside each model.py it imports (its
    stub runs an isolated interpreter: PYTHONDONTWRITEBYTECODE is ignored), here and never into the
    version."""
    from pipeline.atomic import link_or_copy
    from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest

    manifest = ReleaseManifest.model_validate_json((repository / RELEASE_MANIFEST).read_text())
    shutil.rmtree(folder, ignore_errors=True)
    for entry in manifest.files:
        link_or_copy(repository / entry.path, folder / entry.path, entry.sha256)
    return folder


def require_intact(repository: Path, consequence: str) -> None:
    """A published version must match its publish-manifest.json file by file (and hold nothing else)."""
    from pipeline.serving.release import check_version
    from pipeline.serving.release_manifest import RELEASE_MANIFEST

    version = repository.resolve()
    check = check_version(version)
    if not check.ok:
        raise IntegrityError(
            f"{version}: differs from its {RELEASE_MANIFEST} ({check.summary()}); {consequence}",
            hint="`trtllm-pipeline publish` publishes a fresh version; serve versions read-only",
        )
