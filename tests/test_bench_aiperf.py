"""Served load through aiperf (issue 23, items 2 and 4): its command line, its export, the peer, end to end.

aiperf is a dev dependency (the `bench` extra), so the end-to-end tests run wherever the tests do. The
export is parsed from a real one (tests/data/aiperf-0.13.0-triton-c2.json: aiperf 0.13.0, two clients
streaming the tiny model's published throughput repository on the bundled tritonserver, produced by
this module's own argv).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

import jinja2
import pytest
from publish_upstream import Upstream, config_with, run_publish
from tiny_checkpoints import tiny_checkpoint

from pipeline.backends.base import NO_END_ID
from pipeline.bench import aiperf as aiperf_module
from pipeline.bench.aiperf import (
    INSTALL_HINT,
    REQUIREMENT,
    TRITON_TEMPLATE,
    aiperf_argv,
    export_paths,
    find_aiperf,
    latency_of,
    openai_target,
    read_export,
    served_point,
    triton_target,
)
from pipeline.bench.stats import Spread
from pipeline.bench.workload import BenchSettings, ServedCase
from pipeline.cli import main
from pipeline.core.errors import ExitCode, InputError, MissingDependencyError, StageError
from pipeline.core.reporter import RecordingReporter
from pipeline.serving.models.tensornames import Text

FIXTURE = Path(__file__).parent / "data" / "aiperf-0.13.0-triton-c2.json"
# What the fixture's run asked for: 4 requests from 2 clients, 12 output tokens each (its cli_command).
FIXTURE_CASE = ServedCase(concurrency=2, requests=4, runs=1, input_len=8, output_len=12)


def test_a_real_export_gives_the_served_point_aiperf_measured():
    raw = json.loads(FIXTURE.read_text())
    export = read_export(FIXTURE)
    target = triton_target("int8_wo/throughput", "http://127.0.0.1:8000")
    point = served_point([export], FIXTURE_CASE, target)
    assert point.measured_by == "aiperf 0.13.0" and raw["aiperf_version"] == "0.13.0"
    assert (point.runs, point.requests, point.output_tokens) == (1, 4, 48)  # no early stop: 4 x 12 tokens
    assert point.output_tokens_per_s == Spread.of([raw["output_token_throughput"]["avg"]])
    assert point.requests_per_s.median == raw["request_throughput"]["avg"]
    assert point.ttft.p99_ms.median == raw["time_to_first_token"]["p99"] and point.ttft.count == 4
    assert point.itl is not None and point.itl.p50_ms.median == raw["inter_token_latency"]["p50"]
    assert point.endpoint == "http://127.0.0.1:8000/v2/models/ensemble/generate_stream"
    assert "aiperf 0.13.0 (export schema 1.4)" in point.source


def _run_exports(artifact_dir: Path, scales: list[float]) -> list[Path]:
    """The fixture as aiperf lays out N profile runs, each run's throughput and latencies scaled."""
    raw = json.loads(FIXTURE.read_text())
    paths = export_paths(artifact_dir, len(scales))
    for path, k in zip(paths, scales, strict=True):
        run = json.loads(json.dumps(raw))
        run["output_token_throughput"]["avg"] *= k
        run["request_throughput"]["avg"] *= k
        for metric in ("time_to_first_token", "inter_token_latency"):
            for q in ("p50", "p90", "p99"):
                run[metric][q] /= k
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))
    return paths


def test_repeated_profile_runs_give_each_served_figure_its_median_and_range(tmp_path):
    """aiperf 0.13.0 with --num-profile-runs N > 1 (no sweep) writes run k's export under
    profile_runs/run_000k/ (aiperf/orchestrator/orchestrator.py, _resolve_artifact_dir); one run: the
    artifact directory itself."""
    assert export_paths(tmp_path, 1) == [tmp_path / "profile_export_aiperf.json"]
    assert [p.relative_to(tmp_path).as_posix() for p in export_paths(tmp_path, 3)] == [
        f"profile_runs/run_000{k}/profile_export_aiperf.json" for k in (1, 2, 3)
    ]
    raw = json.loads(FIXTURE.read_text())
    rate, ttft_p99 = raw["output_token_throughput"]["avg"], raw["time_to_first_token"]["p99"]
    case = FIXTURE_CASE.model_copy(update={"runs": 3})
    target = triton_target("int8_wo/throughput", "http://127.0.0.1:8000")
    steady = [read_export(p) for p in _run_exports(tmp_path / "steady", [1.0, 1.04, 0.98])]
    point = served_point(steady, case, target)
    assert point.runs == 3 and point.output_tokens_per_s.runs == 3
    tokens = point.output_tokens_per_s
    assert (tokens.median, tokens.low, tokens.high) == pytest.approx((rate, rate * 0.98, rate * 1.04))
    assert not tokens.noisy  # 6% across runs: within NOISY_RELATIVE_SPREAD
    assert point.ttft.p99_ms.high == pytest.approx(ttft_p99 / 0.98)  # the slowest run's p99
    assert point.ttft.count == 3 * raw["time_to_first_token"]["count"]
    assert "3 profile run(s) per client count (--num-profile-runs)" in point.source
    # A run that served at two thirds the speed of the others: the row says noisy, not a settled figure.
    busy = [read_export(p) for p in _run_exports(tmp_path / "busy", [1.0, 0.66, 1.01])]
    noisy = served_point(busy, case, target)
    assert noisy.output_tokens_per_s.noisy and noisy.output_tokens_per_s.median == pytest.approx(rate)
    assert noisy.ttft.p50_ms.noisy


def test_one_client_gives_batch_1_latency_with_each_requests_spread():
    raw = json.loads(FIXTURE.read_text())
    latency = latency_of(read_export(FIXTURE), FIXTURE_CASE, FIXTURE)
    ttft, per_user = raw["time_to_first_token"], raw["output_token_throughput_per_user"]
    assert (latency.ttft_ms.median, latency.ttft_ms.low, latency.ttft_ms.high) == (
        ttft["p50"],
        ttft["min"],
        ttft["max"],
    )
    assert latency.decode_tokens_per_s.median == per_user["p50"] and latency.runs == 4
    assert latency.measured_by == "aiperf 0.13.0"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"is_complete": False}, "did not complete cleanly"),
        ({"error_request_count": {"unit": "requests", "avg": 2.0}}, "2 failed request"),
        ({"schema_version": "2.0"}, "export schema 2.0"),
        ({"time_to_first_token": None}, "field time_to_first_token"),
    ],
)
def test_an_export_bench_cannot_trust_is_one_line_naming_the_file(tmp_path, change, message):
    raw = json.loads(FIXTURE.read_text())
    path = tmp_path / "profile_export_aiperf.json"
    path.write_text(json.dumps({**raw, **change}))
    with pytest.raises(StageError, match=message) as info:
        read_export(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(StageError, match="wrote no readable"):
        read_export(tmp_path / "missing.json")


def test_the_triton_body_aiperf_renders_is_the_ensembles_request():
    """The template as aiperf's TemplateEndpoint renders it (aiperf 0.13.0, endpoints/template_endpoint.py:
    jinja2.Environment(autoescape=True), `text` and `max_tokens` from the turn; the JSON must parse)."""
    argv = aiperf_argv(
        Path("aiperf"),
        triton_target("v", "http://127.0.0.1:8000"),
        FIXTURE_CASE,
        prompts_file=Path("p.jsonl"),
        tokenizer_dir=Path("tok"),
        artifact_dir=Path("out"),
        warmup_requests=1,
    )
    assert argv[argv.index("--endpoint-type") + 1] == "template"
    assert argv[argv.index("--custom-endpoint") + 1] == "/v2/models/ensemble/generate_stream"
    assert argv[argv.index("--concurrency") + 1] == "2" and argv[argv.index("--request-count") + 1] == "4"
    assert argv[argv.index("--num-profile-runs") + 1] == "1"  # the case's runs, one invocation
    extra = json.loads(argv[argv.index("--extra-inputs") + 1])
    assert extra["payload_template"] == TRITON_TEMPLATE and extra["response_field"] == Text.TEXT_OUTPUT
    text = 'a "quoted" <prompt> & more\n'
    body = json.loads(
        jinja2.Environment(autoescape=True).from_string(TRITON_TEMPLATE).render(text=text, max_tokens=7)
    )
    assert body == {
        Text.TEXT_INPUT: text,
        Text.MAX_TOKENS: 7,
        Text.END_ID: NO_END_ID,  # no token matches: no early stop
        Text.TEMPERATURE: 0.0,
        Text.STREAM: True,
    }
    peer = aiperf_argv(
        Path("aiperf"),
        aiperf_module.Target(name="p", kind="openai", url="http://h:1", model="m"),
        FIXTURE_CASE,
        prompts_file=Path("p.jsonl"),
        tokenizer_dir=Path("tok"),
        artifact_dir=Path("out"),
        warmup_requests=0,
    )
    assert peer[peer.index("--endpoint-type") + 1] == "completions"
    assert json.loads(peer[peer.index("--extra-inputs") + 1]) == {"ignore_eos": True}
    assert "--custom-endpoint" not in peer


def test_without_aiperf_the_bench_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    with pytest.raises(MissingDependencyError) as info:
        find_aiperf()
    assert info.value.hint == INSTALL_HINT and 'pip install "trtllm-pipeline[bench]"' in INSTALL_HINT
    code = main(["bench", "--work-dir", str(tmp_path / "work"), "--served"])
    err = capsys.readouterr().err
    assert code == ExitCode.MISSING_DEPENDENCY
    assert "aiperf is not installed" in err and "trtllm-pipeline[bench]" in err and "Traceback" not in err


def test_aiperf_is_the_bench_extra_and_a_dev_dependency_of_the_range_bench_reads():
    """One range: the extra users install, the dev environment the tests run in, and what bench names."""
    from packaging.requirements import Requirement

    wanted = Requirement(REQUIREMENT)
    declared = [Requirement(r) for r in importlib.metadata.requires("trtllm-pipeline") or ()]
    extras = {
        extra
        for r in declared
        if r.name == wanted.name and r.specifier == wanted.specifier and r.marker is not None
        for extra in ("bench", "dev")
        if r.marker.evaluate({"extra": extra})
    }
    assert extras == {"bench", "dev"}
    assert find_aiperf().is_file()  # installed with the dev dependencies: the served tests run here


def _sse(url: str, body: dict) -> list[dict | str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    events: list[dict | str] = []
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Content-Type"] == "text/event-stream"
        for line in answer.read().decode().split("\n\n"):
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_the_peer_streams_as_openais_schema_says():
    """tests/openai_peer.py against the OpenAI API reference it cites (openapi.yaml at 5780008615)."""
    from openai_peer import MODEL, WORD, serving

    with serving(token_delay_s=0.0) as url:
        chat = _sse(
            f"{url}/v1/chat/completions", {"model": MODEL, "messages": [], "max_tokens": 3, "stream": True}
        )
        assert chat[-1] == "[DONE]" and all(e["object"] == "chat.completion.chunk" for e in chat[:-1])
        assert chat[0]["choices"][0]["delta"] == {"role": "assistant", "content": WORD}
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in chat[:-1]) == WORD * 3
        assert [e["choices"][0]["finish_reason"] for e in chat[:-1]] == [None, None, "length"]
        done = _sse(
            f"{url}/v1/completions",
            {
                "model": MODEL,
                "prompt": "x",
                "max_tokens": 2,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert [e["choices"][0]["text"] for e in done[:2]] == [WORD, WORD]
        assert done[2]["choices"] == [] and done[2]["usage"]["completion_tokens"] == 2 and done[3] == "[DONE]"
        target = openai_target(f"{url}/v1")  # the base URL with or without /v1
        assert (target.name, target.model, target.route) == (url, MODEL, "/v1/completions")
    with pytest.raises(InputError, match="/v1/models did not answer") as info:
        openai_target(url)
    assert "start the peer first" in info.value.hint


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir):
    """The tiny model's int8_sq throughput variant (max batch 8) published by the real publish stage."""
    tmp = tmp_path_factory.mktemp("bench-served")
    config = config_with(tmp)
    upstream = Upstream(
        tokenizer_dir=tiny_model_dir,
        checkpoint_dir=tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq"),
    )
    report = run_publish(config, tmp / "work", upstream, profile="throughput")
    assert report.error is None, report.error
    return config, tmp / "work", upstream


def bench_stages(upstream: Upstream) -> dict:
    """The publish stand-ins, but with the gate of another config: its minimal verdict (not a gate.json
    bench reads) is then not current, and bench reports the gate as not run."""
    from fake_stages import StandIn

    return {**upstream.stages(), "gate": StandIn("gate", None, lambda config, task: {"another": "gate"})}


@pytest.mark.triton
@pytest.mark.slow
def test_served_and_compare_put_aiperfs_rows_for_the_variant_and_the_peer_in_one_report(published, tmp_path):
    from openai_peer import serving

    from pipeline.bench.run import run_bench
    from pipeline.core.store import ArtifactStore

    config, work_dir, upstream = published
    settings = BenchSettings(
        input_len=16,
        output_len=6,
        latency_runs=2,
        throughput_runs=1,
        batch_sizes=(2,),
        concurrency=(2,),  # one aiperf invocation per endpoint: each takes ~30 s to start on 2 cores
        requests_per_client=2,
        served_runs=2,  # a range over runs, at the least cost
        served=True,
    )
    with serving(token_delay_s=0.001) as peer:
        report, paths = run_bench(
            config,
            ArtifactStore(work_dir),
            settings=settings.model_copy(update={"compare": (peer,)}),
            out_dir=tmp_path / "bench",
            reporter=RecordingReporter(),
            profiles={"throughput"},
            stages=bench_stages(upstream),
        )
    (variant,) = report.variants
    assert [p.batch_size for p in variant.throughput] == [2]  # the engine's own figures, in process
    assert [(p.concurrency, p.runs, p.requests) for p in variant.served] == [(2, 2, 4)]
    # end_id -1 through the template: every request of every run streamed all 6 tokens (the tokenizer's).
    assert [p.output_tokens for p in variant.served] == [24]
    assert all(p.output_tokens_per_s.runs == 2 and p.ttft.count == 8 for p in variant.served)
    assert all(p.measured_by.startswith("aiperf 0.13") for p in variant.served)
    assert all(p.endpoint.endswith("/v2/models/ensemble/generate_stream") for p in variant.served)
    (peer_result,) = report.peers
    assert peer_result.name == peer and peer_result.workload_of == "trtllm-engine/int8_sq/throughput"
    assert [(p.concurrency, p.runs, p.requests) for p in peer_result.served] == [(2, 2, 4)]
    aiperf_dir = tmp_path / "bench" / "aiperf"
    for where in (aiperf_dir / "trtllm-engine" / "int8_sq" / "throughput", aiperf_dir / "peers" / "0"):
        assert all(p.is_file() for p in export_paths(where / "c2", 2))
    md = paths["markdown"].read_text()
    assert f"| trtllm-engine/int8_sq/throughput | {variant.served[0].measured_by} | 2 | 2 | 4 |" in md
    assert f"| peer {peer} | {peer_result.served[0].measured_by} | 2 | 2 | 4 |" in md
    assert "2 aiperf profile runs per client count served" in md
    assert md.index("## Recommendation") < md.index(f"| peer {peer} | clients") < md.index("## Latency")
    assert "GPU utilization is not measured" in md
    assert paths["pareto_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The version the bench served is the one published, untouched.
    assert not list((work_dir.parent / "published").rglob("__pycache__"))


@pytest.mark.triton
@pytest.mark.slow
def test_served_drives_a_pytorch_release_through_its_own_trtllm_serve_command(tmp_path, tiny_model_dir):
    """A trtllm-pytorch release is served as its users serve it: the bundle's trtllm-serve command (on the
    CPU, the stand-in it names), aiperf on its OpenAI /v1/completions with ignore_eos."""
    from publish_upstream import cpu_engine_info
    from test_pytorch_serving import _as_pytorch_build, _publish

    from pipeline.bench.run import run_bench
    from pipeline.core.store import ArtifactStore

    info = cpu_engine_info().model_copy(update={"backend": "reference-pytorch"})
    config, published, current = _publish(tmp_path, tiny_model_dir, target_lines=None, info=info)
    assert published.error is None, published.error
    upstream = Upstream(
        tokenizer_dir=tiny_model_dir, engine_info=info, engine_edit=_as_pytorch_build(tiny_model_dir)
    )
    settings = BenchSettings(
        input_len=16,
        output_len=6,
        latency_runs=1,
        throughput_runs=1,
        batch_sizes=(1,),
        concurrency=(2,),
        requests_per_client=1,
        served_runs=1,
        served=True,
    )
    mmaps = lambda: set(Path(tempfile.gettempdir()).glob("aiperf_mmap_*"))  # noqa: E731
    before = mmaps()
    report, paths = run_bench(
        config,
        ArtifactStore(tmp_path / "work"),
        settings=settings,
        out_dir=tmp_path / "bench",
        reporter=RecordingReporter(),
        backends={"trtllm-pytorch"},
        profiles={"latency"},
        stages=bench_stages(upstream),
    )
    (variant,) = report.variants
    assert variant.label == "trtllm-pytorch/int8_wo/latency"
    # ignore_eos: both requests wrote all 6 tokens, as aiperf counts them with the tokenizer
    assert [(p.concurrency, p.requests, p.output_tokens) for p in variant.served] == [(2, 2, 12)]
    assert all(p.endpoint.endswith("/v1/completions") for p in variant.served)
    assert all(p.measured_by.startswith("aiperf 0.13") for p in variant.served)
    log = tmp_path / "work" / "bench-serve" / "trtllm-pytorch" / "int8_wo" / "latency" / "trtllm-serve.log"
    assert "pipeline.serving.pytorch.openai_server" in log.read_text().splitlines()[0]
    assert (
        f"| trtllm-pytorch/int8_wo/latency | {variant.served[0].measured_by} | 2 |"
        in paths["markdown"].read_text()
    )
    version = current.resolve()
    assert not list(version.rglob("__pycache__"))
    assert mmaps() == before  # aiperf's memory-mapped dataset went to a folder of its own, since removed


def test_served_refuses_a_published_engine_other_than_the_built_one(published, tmp_path):
    from pipeline.bench.run import BuiltEngine, require_published_engine
    from pipeline.core.errors import IntegrityError
    from pipeline.serving.smoke import published_repository

    config, work_dir, _ = published
    repository = published_repository(config, "trtllm-engine", "int8_sq", "throughput")
    build = next(
        p
        for p in (work_dir / "store" / "build" / "trtllm-engine" / "int8_sq" / "throughput").iterdir()
        if p.is_dir()
    )
    engine = BuiltEngine("trtllm-engine", "int8_sq", "throughput", build / "engine")
    require_published_engine(repository, engine)  # the same bytes: accepted
    other = tmp_path / "build"
    shutil.copytree(build, other)
    manifest = json.loads((other / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"].startswith("engine/"):
            entry["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        IntegrityError, match="publishes another trtllm-engine/int8_sq/throughput engine"
    ) as info:
        require_published_engine(
            repository, BuiltEngine("trtllm-engine", "int8_sq", "throughput", other / "engine")
        )
    assert "trtllm-pipeline publish --backend trtllm-engine --precision int8_sq --profile throughput" in (
        info.value.hint
    )


def test_the_cli_passes_served_and_every_compare_url(tmp_path, monkeypatch):
    from pipeline.commands import bench as command

    seen = []

    def capture(config, work_dir, settings, **kwargs):
        seen.append(settings)
        raise InputError("captured")

    monkeypatch.setattr(command, "bench", capture)
    args = [
        "bench",
        "--work-dir",
        str(tmp_path),
        "--served",
        "--compare",
        "http://a:1",
        "--compare",
        "http://b:2",
        "--served-runs",
        "5",
    ]
    assert main(args) == ExitCode.BAD_INPUT
    (settings,) = seen
    assert settings.served and settings.compare == ("http://a:1", "http://b:2") and settings.wants_served_load
    assert settings.served_runs == 5 and BenchSettings().served_runs == 3
    # aiperf takes 1 to 10 profile runs (config/flags/cli_config.py, num_profile_runs): refused before it runs.
    assert main([*args[:-1], "11"]) == ExitCode.BAD_INPUT and len(seen) == 1
    assert not BenchSettings().wants_served_load


def test_served_and_server_url_together_are_refused_before_anything_runs(tmp_path, capsys):
    args = ["bench", "--work-dir", str(tmp_path), "--served", "--server-url", "http://127.0.0.1:9"]
    assert main(args) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "--served starts a server per published variant" in err and "Traceback" not in err
