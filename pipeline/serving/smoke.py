"""The smoke check: serve a published repository on a real tritonserver and compare its text with the reference.

Every prompt goes through the ensemble (POST /generate); the first also
streams through the ensemble and through the BLS model (/generate_stream).
Where a request may hold several prompts (a decoupled repository whose engine
batches more than one), the prompts also go in one request to each, with a
different token limit each: the answers arrive one per prompt in completion
order, and each, placed by its `batch_index`, is checked against its own prompt.
Each answer must equal the greedy answer the reference runtime gives for the
same engine, tokenized and detokenized as the serving models do.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import InputError, IntegrityError, MissingDependencyError, StageError
from pipeline.core.reporter import Reporter
from pipeline.facts.config import PipelineConfig
from pipeline.serving.client import generate, generate_stream
from pipeline.serving.models.tensornames import Text
from pipeline.serving.render import CONFIG_NAME, parse_model_config
from pipeline.serving.repository import ENGINE_SUBDIR, TOKENIZER_SUBDIR
from pipeline.serving.server import TritonInstall, TritonServer
from pipeline.serving.smoke_report import SmokeCheck, SmokeReport, TaskComparison

if TYPE_CHECKING:
    from pipeline.gate.verdict import TaskResult
    from pipeline.runtime.sampling import SamplingParams
    from pipeline.serving.task_check import ServedTasks

ROUTES = ("ensemble/generate", "ensemble/generate_stream", "tensorrt_llm_bls/generate_stream")
BATCH_ROUTES = ("ensemble/generate_stream (batch)", "tensorrt_llm_bls/generate_stream (batch)")


def _config(repository: Path, model: str):
    path = repository / model / CONFIG_NAME
    if not path.is_file():
        raise StageError(
            "smoke", f"{repository} is not a published model repository (no {model}/{CONFIG_NAME})"
        )
    return parse_model_config(path.read_text(), str(path), expected_name=model)


def reference_answers(
    repository: Path,
    prompts: list[str],
    max_tokens: int | Sequence[int],
    *,
    sampling: SamplingParams | None = None,
    bad_words: Sequence[Sequence[int]] = (),
) -> list[str]:
    """The reference runtime's answers (greedy unless `sampling` says otherwise; max_tokens for all or
    per prompt; bad words for every prompt), tokenized and decoded exactly as the serving models do.
    With sampling.num_return_sequences > 1, that many answers per prompt, drawn together as the server
    draws them."""
    from transformers import AutoTokenizer

    from pipeline.backends import load_runner
    from pipeline.serving.models.textcodec import PieceDecoder

    add_special = _config(repository, "preprocessing").parameters["add_special_tokens"].string_value == "true"
    tokenizer = AutoTokenizer.from_pretrained(repository / TOKENIZER_SUBDIR)
    runner = load_runner(repository / ENGINE_SUBDIR)
    decoder = PieceDecoder(tokenizer)
    limits = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
    answers = []
    for prompt, limit in zip(prompts, limits, strict=True):  # one at a time, as the server runs each
        ids = tokenizer.encode(prompt, add_special_tokens=add_special)
        rows = runner.generate(
            [ids],
            max_new_tokens=limit,
            end_id=tokenizer.eos_token_id,
            bad_words=[bad_words] if bad_words else (),
            **({} if sampling is None else {"sampling": sampling}),
        )
        answers += [decoder.decode(list(tokens)[:limit]) for tokens in rows]
    return answers


def run_smoke(
    repository: Path,
    prompts: list[str],
    *,
    max_tokens: int,
    work_dir: Path,
    reporter: Reporter,
    install: TritonInstall | None = None,
    tasks: ServedTasks | None = None,
) -> SmokeReport:
    """Start tritonserver on `repository`, ask it `prompts`, compare with the reference (and, with
    `tasks`, score them served against the gated scores), stop it."""
    require_servable_here(repository)
    gated = None
    if tasks is not None:  # read first: a version gated on other tasks is refused at once
        from pipeline.serving.task_check import gated_scores

        gated = gated_scores(repository, tasks)
    reporter.info(f"reference answers from {repository / ENGINE_SUBDIR}")
    expected = reference_answers(repository, prompts, max_tokens)
    batch = batched_request(repository, prompts, max_tokens)
    batch_expected = reference_answers(repository, batch.prompts, batch.limits) if batch else []
    report = SmokeReport(repository)
    started = time.perf_counter()
    served = serving_view(repository, work_dir)
    with TritonServer(served, work_dir=work_dir, install=install) as server:
        report.startup_s = time.perf_counter() - started
        reporter.info(
            f"tritonserver ready at {server.url} in {report.startup_s:.1f}s (log: {server.log_path})"
        )
        report.checks = ask_server(server.url, prompts, expected, max_tokens=max_tokens)
        if batch:
            report.checks += ask_batched(server.url, batch, batch_expected)
        if tasks is not None and gated is not None:
            report.tasks = ask_tasks(server.url, repository, tasks, gated, reporter)
    return report


def ask_tasks(
    url: str, repository: Path, tasks: ServedTasks, gated: dict[str, TaskResult], reporter: Reporter
) -> list[TaskComparison]:
    """The tasks scored through the ensemble, each against the version's gated score."""
    from transformers import AutoTokenizer

    from pipeline.backends import engine_limits
    from pipeline.serving.task_check import check_served_tasks, ensemble_completion

    reporter.info(f"scoring {', '.join(t.name for t in tasks.tasks)} against the served ensemble")
    return check_served_tasks(
        ensemble_completion(url),
        gated,
        tasks,
        tokenizer=AutoTokenizer.from_pretrained(repository / TOKENIZER_SUBDIR),
        limits=engine_limits(repository / ENGINE_SUBDIR),
    )


def require_servable_here(repository: Path) -> None:
    """The bundled tritonserver has the Python backend only, and the CPU stand-ins of TensorRT-LLM serve
    only a CPU release: a GPU repository or release serves in its container."""
    from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest

    if is_pytorch_release(repository):
        manifest = ReleaseManifest.model_validate_json((repository / RELEASE_MANIFEST).read_text())
        if manifest.serving.mount_path is not None:
            raise MissingDependencyError(
                f"{repository}: a PyTorch-backend release for {manifest.serving.serve_with}: its llmapi model "
                "and trtllm-serve need TensorRT-LLM on a GPU",
                hint="serve it in the container named in publish-manifest.json (`run --dry-run` shows the commands)",
            )
        return
    backend = _config(repository, "tensorrt_llm").backend
    if backend != "python":
        raise MissingDependencyError(
            f"{repository}: its tensorrt_llm model needs the '{backend}' backend, which the bundled "
            "tritonserver lacks",
            hint="serve GPU repositories in the container named in publish-manifest.json",
        )


@dataclass(frozen=True)
class BatchedRequest:
    prompts: list[str]
    limits: list[int]  # max_tokens per prompt: different, so completion order differs from the batch's


def batched_request(repository: Path, prompts: list[str], max_tokens: int) -> BatchedRequest | None:
    """Several prompts in one request, if the repository takes them (None: it serves one at a time)."""
    size = min(len(prompts), _config(repository, "ensemble").max_batch_size)
    if size < 2:
        return None
    # The first prompt may generate the most tokens, so it tends to finish last.
    return BatchedRequest(prompts[:size], [max(1, max_tokens - 2 * i) for i in range(size)])


def ask_batched(url: str, batch: BatchedRequest, expected: list[str]) -> list[SmokeCheck]:
    """The batch in one request to the ensemble and to the BLS model; each answer placed by batch_index."""
    checks = []
    for route in BATCH_ROUTES:
        model = route.split("/")[0]
        payload = {Text.TEXT_INPUT: batch.prompts, Text.MAX_TOKENS: batch.limits}
        got = [""] * len(batch.prompts)
        for event in generate_stream(url, model, payload):
            if Text.TEXT_OUTPUT not in event:
                continue  # an empty final response
            index = _one(event.get(Text.BATCH_INDEX), route, Text.BATCH_INDEX)
            if not isinstance(index, int) or not 0 <= index < len(got):
                raise StageError(
                    "smoke", f"{route}: {Text.BATCH_INDEX} {index!r} names no prompt of the {len(got)} sent"
                )
            got[index] += _one(event[Text.TEXT_OUTPUT], route, Text.TEXT_OUTPUT)
        checks += [
            SmokeCheck(route, p, want, g) for p, want, g in zip(batch.prompts, expected, got, strict=True)
        ]
    return checks


def _one(value, route: str, name: str):
    """A one-element JSON output (the generate extension writes [x] or x) as x."""
    while isinstance(value, list):
        if len(value) != 1:
            raise StageError("smoke", f"{route}: {name} holds {len(value)} values in one answer, not 1")
        (value,) = value
    return value


def ask_server(url: str, prompts: list[str], expected: list[str], *, max_tokens: int) -> list[SmokeCheck]:
    """Every prompt through the ensemble; the first also streamed through the ensemble and the BLS model."""
    checks = []
    for prompt, want in zip(prompts, expected, strict=True):
        answer = generate(url, "ensemble", {Text.TEXT_INPUT: prompt, Text.MAX_TOKENS: max_tokens})
        checks.append(SmokeCheck(ROUTES[0], prompt, want, answer[Text.TEXT_OUTPUT]))
    for route in ROUTES[1:]:
        model = route.split("/")[0]
        payload = {Text.TEXT_INPUT: prompts[0], Text.MAX_TOKENS: max_tokens, Text.STREAM: True}
        pieces = [event[Text.TEXT_OUTPUT] for event in generate_stream(url, model, payload)]
        checks.append(SmokeCheck(route, prompts[0], expected[0], "".join(pieces)))
    return checks


def published_repository(config: PipelineConfig, backend: str, precision: str, profile: str) -> Path:
    """The current published version of a variant (what `publish` last released), once `current`
    is found to name a version of this variant."""
    from pipeline.serving.release import CURRENT, check_current
    from pipeline.stages.publish import variant_destination

    slot = variant_destination(config, backend, precision, profile)
    path = slot / CURRENT
    if not path.is_dir():
        raise InputError(
            "nothing published for this variant",
            path=path,
            hint=f"run `trtllm-pipeline publish --backend {backend} --precision {precision} --profile {profile}` first",
        )
    problem = check_current(slot, (config.model.name, backend, precision, profile))
    if problem is not None:
        raise IntegrityError(
            f"{slot}: {problem}; refusing to serve it as {backend}/{precision}/{profile}",
            hint=f"point {CURRENT} at a version of this variant, or `trtllm-pipeline publish` a fresh one",
        )
    return path


def smoke_published(
    config: PipelineConfig,
    *,
    work_dir: Path,
    reporter: Reporter,
    precisions: set[str] | None = None,
    profiles: set[str] | None = None,
    backends: set[str] | None = None,
    prompts: int = 2,
    max_tokens: int | None = None,
    tasks: bool = False,
) -> list[SmokeReport]:
    """Smoke every published variant the filters select, one server at a time; with `tasks`, each
    also scores gate.tasks served."""
    from pipeline.datasets.jsonl import load_prompts

    texts = load_prompts(config.gate.prompts, limit=prompts).texts
    served_tasks = served_gate_tasks(config, work_dir) if tasks else None
    reports = []
    for backend, precision, profile in config.published_variants(backends, precisions, profiles):
        repository = published_repository(config, backend, precision, profile)
        require_intact(repository, "refusing to serve it")
        reporter.info(f"smoke {backend}/{precision}/{profile}: serving {repository.resolve()}")
        common = {
            "max_tokens": max_tokens or config.gate.max_new_tokens,
            "work_dir": work_dir / "smoke" / backend / precision / profile,
            "reporter": reporter,
        }
        smoke_one = run_pytorch_smoke if is_pytorch_release(repository) else run_smoke
        reports.append(smoke_one(repository, texts, tasks=served_tasks, **common))
        require_intact(repository, "the server wrote into it")
    return reports


def served_gate_tasks(config: PipelineConfig, work_dir: Path) -> ServedTasks:
    from pipeline.facts.layout import datasets_cache_dir
    from pipeline.gate.tasks import require_lm_eval

    if not config.gate.tasks:
        raise InputError(
            "smoke --tasks: gate.tasks is empty, so nothing was gated on a task",
            path=config.source,
            hint="list lm-eval tasks in gate.tasks (and publish again), or leave out --tasks",
        )
    require_lm_eval()
    from pipeline.serving.task_check import ServedTasks

    return ServedTasks(config.gate.tasks, config.gate.task_dir, datasets_cache_dir(work_dir))


def is_pytorch_release(repository: Path) -> bool:
    from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest

    manifest = ReleaseManifest.model_validate_json((repository / RELEASE_MANIFEST).read_text())
    return manifest.serving.llmapi_repository is not None


def run_pytorch_smoke(
    repository: Path, prompts: list[str], *, tasks: ServedTasks | None = None, **kwargs
) -> SmokeReport:
    """A PyTorch-backend release: its llmapi repository and trtllm-serve bundle, on the CPU stand-ins
    (and, with `tasks`, them scored through trtllm-serve against the gated scores)."""
    from pipeline.serving.pytorch.smoke import run_release_smoke
    from pipeline.serving.task_check import gated_scores

    require_servable_here(repository)
    gated = gated_scores(repository, tasks) if tasks is not None else None  # refused before serving
    view = serving_view(repository, kwargs["work_dir"])
    report = run_release_smoke(view, prompts, tasks=tasks, gated=gated, **kwargs)
    report.repository = repository
    return report


def serving_view(repository: Path, work_dir: Path) -> Path:
    """work_dir/repository, made afresh: hard links to (or verified copies of) every file of the published version,
    in folders of its own. The Python backend writes `__pycache__` beside each model.py it imports (its
    stub runs an isolated interpreter: PYTHONDONTWRITEBYTECODE is ignored), here and never into the
    version."""
    from pipeline.core.atomic import link_or_copy
    from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest

    manifest = ReleaseManifest.model_validate_json((repository / RELEASE_MANIFEST).read_text())
    folder = work_dir / "repository"
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
