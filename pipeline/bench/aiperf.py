"""Served load through aiperf, NVIDIA's benchmark client (genai-perf's successor), run as a child process.

aiperf is the `bench` extra (and a dev dependency: `make setup` installs it,
so the served tests run wherever the tests do). It runs as a child process;
bench reads only its JSON export.

One aiperf invocation per concurrency level: `--concurrency N` clients, each
sending its next request when its previous one ends, over the same prompt file
for every endpoint (so the variants and the peers answer the same workload),
repeated `--num-profile-runs` times (the warm-up before the first run only,
aiperf's default): each run writes its own export, and a served figure is the
median run's with the lowest and highest run, as the in-process figures are. A
published Triton repository is driven through aiperf's template endpoint
(aiperf/endpoints/template_endpoint.py in the aiperf-0.13.0 wheel: a Jinja2
body, `text` and `max_tokens` from the prompt file, the streamed JSON's
`text_output` read with `response_field`); an OpenAI-compatible peer through
its `completions` endpoint, asked to ignore the end token as the Triton body
asks with `end_id` -1.

The export read is profile_export_aiperf.json (aiperf/exporters/
metrics_json_exporter.py; its fields in aiperf/common/models/export_models.py,
JsonExportData schema 1.4): per metric a unit, avg, p1..p99, min, max, count.
With one run it lies in the artifact directory; with N > 1 in
profile_runs/run_0001 .. run_000N beneath it (aiperf/orchestrator/
orchestrator.py, _resolve_artifact_dir); aiperf's own aggregate (mean and
confidence interval, aggregate/) is not read: bench states medians and ranges.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.backends.base import NO_END_ID
from pipeline.bench.results import LatencyResult, ServedPoint
from pipeline.bench.stats import Percentiles, RunPercentiles, Spread
from pipeline.bench.workload import ServedCase
from pipeline.core.errors import InputError, MissingDependencyError, StageError
from pipeline.core.tools import ToolRunner, run_tool
from pipeline.serving.models.tensornames import Text

STAGE = "bench"
REQUIREMENT = "aiperf>=0.13,<0.14"
INSTALL_HINT = (
    f'pip install "trtllm-pipeline[bench]" (that is, {REQUIREMENT}; `make setup` installs it), or put an '
    "`aiperf` executable on PATH"
)
EXPORT = "profile_export_aiperf.json"
# The export layout this module reads (JsonExportData.SCHEMA_VERSION); a new major may move fields.
SCHEMA_MAJOR = "1"
ENSEMBLE = "ensemble"

# The ensemble's /generate_stream body, as smoke and the TensorRT-LLM backend's own clients send it;
# end_id matches no token, so every request yields max_tokens (TensorRT-LLM's benchmarks do the same).
TRITON_TEMPLATE = (
    "{"
    f'"{Text.TEXT_INPUT}": {{{{ text|tojson }}}}, '
    f'"{Text.MAX_TOKENS}": {{{{ max_tokens }}}}, '
    f'"{Text.END_ID}": {NO_END_ID}, '
    f'"{Text.TEMPERATURE}": 0.0, '
    f'"{Text.STREAM}": true'
    "}"
)


def find_aiperf() -> Path:
    """The aiperf executable: on PATH, else the one installed beside this interpreter (the bench extra)."""
    found = shutil.which("aiperf")
    if found:
        return Path(found)
    beside = Path(sys.prefix) / "bin" / "aiperf"
    if beside.is_file():
        return beside
    raise MissingDependencyError(
        "aiperf is not installed: served load is measured with it", hint=INSTALL_HINT
    )


class Target(BaseModel):
    """An endpoint aiperf drives: a published variant's Triton server or an OpenAI-compatible peer."""

    model_config = ConfigDict(frozen=True)
    name: str  # how the tables and plots name it
    kind: Literal["triton", "openai"]
    url: str  # the server's base URL
    model: str

    @property
    def route(self) -> str:
        if self.kind == "triton":
            return f"/v2/models/{self.model}/generate_stream"
        return "/v1/completions"


def triton_target(name: str, url: str) -> Target:
    return Target(name=name, kind="triton", url=url, model=ENSEMBLE)


def openai_target(url: str, *, timeout_s: float = 10.0) -> Target:
    """A peer at `url`, the model it serves read from its /v1/models (every OpenAI-compatible server lists it)."""
    base = url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{base}/v1/models", timeout=timeout_s) as answer:
            listed = json.loads(answer.read())
        model = listed["data"][0]["id"]
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(
            f"--compare {url}: {base}/v1/models did not answer ({exc})",
            hint="start the peer first; --compare takes an OpenAI-compatible server's base URL",
        ) from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise InputError(
            f"--compare {url}: {base}/v1/models lists no model",
            hint="--compare takes an OpenAI-compatible server's base URL (its /v1/models lists the model)",
        ) from None
    return Target(name=base, kind="openai", url=base, model=str(model))


def write_prompts(path: Path, prompts: Sequence[str], output_len: int) -> Path:
    """aiperf's single_turn file (aiperf/dataset/loader/models.py, SingleTurn): one request per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": p, "output_length": output_len}) + "\n" for p in prompts))
    return path


def aiperf_argv(
    aiperf: Path,
    target: Target,
    case: ServedCase,
    *,
    prompts_file: Path,
    tokenizer_dir: Path,
    artifact_dir: Path,
    warmup_requests: int,
) -> list[str]:
    """One concurrency level against one endpoint (flags as aiperf 0.13's config/flags/cli_config.py names them)."""
    argv = [
        str(aiperf),
        "profile",
        "--model",
        target.model,
        "--url",
        target.url,
        "--streaming",
        "--tokenizer",
        str(tokenizer_dir),
        "--input-file",
        str(prompts_file),
        "--custom-dataset-type",
        "single_turn",
        "--concurrency",
        str(case.concurrency),
        "--request-count",
        str(case.requests),
        "--num-profile-runs",
        str(case.runs),
        "--warmup-request-count",
        str(warmup_requests),
        "--artifact-dir",
        str(artifact_dir),
        "--ui-type",
        "none",
        "--no-gpu-telemetry",
        "--no-server-metrics",
    ]
    if target.kind == "triton":
        argv += ["--endpoint-type", "template", "--custom-endpoint", target.route]
        extra: dict[str, Any] = {"payload_template": TRITON_TEMPLATE, "response_field": Text.TEXT_OUTPUT}
    else:
        argv += ["--endpoint-type", "completions"]
        extra = {"ignore_eos": True}
    # As one JSON object: the key:value form splits on the template's own colons.
    return [*argv, "--extra-inputs", json.dumps(extra)]


class Metric(BaseModel):
    """One metric of the export (JsonMetricResult): the fields bench reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    unit: str
    avg: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None
    count: int | None = None
    sum: float | None = None


class Export(BaseModel):
    """profile_export_aiperf.json: what bench takes from it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    schema_version: str
    aiperf_version: str
    is_complete: bool = True
    was_cancelled: bool = False
    error_summary: list[Any] = []
    request_count: Metric
    error_request_count: Metric | None = None
    request_throughput: Metric
    output_token_throughput: Metric
    time_to_first_token: Metric
    inter_token_latency: Metric | None = None
    output_token_throughput_per_user: Metric | None = None
    total_output_tokens: Metric
    benchmark_duration: Metric
    input_sequence_length: Metric | None = None


def _ms(m: Metric) -> Percentiles:
    """A latency read_export has checked: in ms, with p50/p90/p99."""
    assert m.p50 is not None and m.p90 is not None and m.p99 is not None
    return Percentiles(p50_ms=m.p50, p90_ms=m.p90, p99_ms=m.p99, count=m.count or 0)


def read_export(path: Path) -> Export:
    """The export of one run, refused when it is unreadable, of another layout, incomplete or has errors."""
    try:
        export = Export.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise StageError(STAGE, f"aiperf wrote no readable {path.name}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise StageError(
            STAGE, f"{path}: field {where}: {first['msg']} (not an aiperf {SCHEMA_MAJOR}.x export)"
        ) from None
    if export.schema_version.split(".")[0] != SCHEMA_MAJOR:
        raise StageError(
            STAGE,
            f"{path}: export schema {export.schema_version} (aiperf {export.aiperf_version}); bench reads "
            f"schema {SCHEMA_MAJOR}.x",
            hint=f"install {REQUIREMENT}",
        )
    errors = int(export.error_request_count.avg or 0) if export.error_request_count else 0
    if errors or export.error_summary or not export.is_complete or export.was_cancelled:
        raise StageError(
            STAGE,
            f"{path}: aiperf's run did not complete cleanly ({errors} failed request(s), "
            f"complete {export.is_complete}, cancelled {export.was_cancelled})",
            hint=f"its log is in {path.parent / 'logs'}; is the server serving this engine?",
        )
    for what in ("time_to_first_token", "inter_token_latency"):
        m = getattr(export, what)
        if m is not None and (m.unit != "ms" or None in (m.p50, m.p90, m.p99)):
            raise StageError(STAGE, f"{path}: {what} is not in ms with p50/p90/p99 (unit {m.unit!r})")
    return export


def export_paths(artifact_dir: Path, runs: int) -> list[Path]:
    """Where aiperf writes each run's export (orchestrator.py _resolve_artifact_dir, no sweep)."""
    if runs == 1:
        return [artifact_dir / EXPORT]
    return [artifact_dir / "profile_runs" / f"run_{i:04d}" / EXPORT for i in range(1, runs + 1)]


def served_point(exports: Sequence[Export], case: ServedCase, target: Target) -> ServedPoint:
    """One client count from its runs' exports: each figure the median run's, with the range of runs."""
    first = exports[0]

    def spread(metric: str) -> Spread:
        return Spread.of([getattr(e, metric).avg or 0.0 for e in exports])

    itls = [e.inter_token_latency for e in exports]
    runs = len(exports)
    return ServedPoint(
        concurrency=case.concurrency,
        runs=runs,
        requests=int(first.request_count.avg or 0),
        input_len=case.input_len,
        output_len=case.output_len,
        output_tokens=int(spread("total_output_tokens").median),
        wall_s=spread("benchmark_duration").median,
        output_tokens_per_s=spread("output_token_throughput"),
        requests_per_s=spread("request_throughput"),
        ttft=RunPercentiles.of([_ms(e.time_to_first_token) for e in exports]),
        itl=None if None in itls else RunPercentiles.of([_ms(m) for m in itls if m is not None]),
        measured_by=f"aiperf {first.aiperf_version}",
        endpoint=f"{target.url}{target.route}",
        source=(
            f"aiperf {first.aiperf_version} (export schema {first.schema_version}), {runs} profile run(s) "
            f"per client count (--num-profile-runs), each its own {EXPORT}: clients streaming "
            f"{target.route}, tokens counted with the model's tokenizer; median run, lowest-highest run"
        ),
    )


def latency_of(export: Export, case: ServedCase, path: Path) -> LatencyResult:
    """Batch 1 as aiperf saw it at one client: TTFT and decode tokens/s over its requests (median, min-max)."""
    ttft, per_user = export.time_to_first_token, export.output_token_throughput_per_user
    if export.inter_token_latency is None or per_user is None:
        raise StageError(STAGE, f"{path}: no inter-token latency (did every request stream one token only?)")
    for m in (ttft, per_user):
        if None in (m.p50, m.min, m.max):
            raise StageError(STAGE, f"{path}: a metric in {m.unit} lacks p50/min/max")
    count = int(export.request_count.avg or 0)
    return LatencyResult(
        input_len=case.input_len,
        output_len=case.output_len,
        runs=count,
        ttft_ms=Spread(median=ttft.p50, low=ttft.min, high=ttft.max, runs=count),  # type: ignore[arg-type]
        itl=_ms(export.inter_token_latency),
        # aiperf's tokens/s per user is 1 / its inter-token latency: the decode speed, no prefill.
        decode_tokens_per_s=Spread(median=per_user.p50, low=per_user.min, high=per_user.max, runs=count),  # type: ignore[arg-type]
        measured_by=f"aiperf {export.aiperf_version}",
        source=f"aiperf {export.aiperf_version}, one client, {path.name} (requests as runs: p50, min-max)",
    )


def run_level(
    aiperf: Path,
    target: Target,
    case: ServedCase,
    *,
    prompts_file: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    warmup_requests: int,
    runner: ToolRunner | None = None,
) -> list[tuple[Export, Path]]:
    """One client count, its profile runs in one aiperf child process (logged to out_dir/aiperf.log): each
    run's export and where it is."""
    artifact_dir = out_dir / f"c{case.concurrency}"
    shutil.rmtree(artifact_dir, ignore_errors=True)
    argv = aiperf_argv(
        aiperf,
        target,
        case,
        prompts_file=prompts_file,
        tokenizer_dir=tokenizer_dir,
        artifact_dir=artifact_dir,
        warmup_requests=warmup_requests,
    )
    # aiperf memory-maps its dataset under <temp dir>/aiperf_mmap_<id>/ and leaves that folder behind
    # (aiperf/common/environment.py, _DatasetSettings.MMAP_BASE_PATH and MMAP_CACHE_ENABLED in 0.13.0):
    # give it a folder of its own, removed afterwards, and no cache to keep across runs.
    with tempfile.TemporaryDirectory(prefix="aiperf-mmap-") as mmap:
        env = {"AIPERF_DATASET_MMAP_BASE_PATH": mmap, "AIPERF_DATASET_MMAP_CACHE_ENABLED": "false"}
        run_tool(
            argv,
            stage=STAGE,
            log_path=out_dir / "aiperf.log",
            env=env,
            **({"runner": runner} if runner else {}),
        )
    return [(read_export(path), path) for path in export_paths(artifact_dir, case.runs)]
