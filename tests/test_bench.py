"""trtllm-pipeline bench: statistics, workload planning, the harness, the report, the command.

Tolerances: pytest.approx with its default (relative 1e-6) only compares two float64 evaluations of the
same arithmetic on exact inputs, which agree to a few float64 roundings (2^-53 each): exact by
construction. The one other tolerance (the plan's rounded ceilings) says where it comes from.
"""

from __future__ import annotations

import json
import os
import random
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline.bench.files import write_bench_report
from pipeline.bench.harness import (
    IN_PROCESS_HARNESS,
    LATENCY_SOURCE,
    THROUGHPUT_SOURCE,
    measure_engine,
    run_batch,
    stream_one,
)
from pipeline.bench.machine import MachineSnapshot, MachineState, nvml_gpu_clocks, snapshot
from pipeline.bench.memory import MemoryReading, ProcessRssProbe
from pipeline.bench.reference import published_estimate, ratios
from pipeline.bench.report import spread_text
from pipeline.bench.results import (
    BENCH_REPORT_VERSION,
    BenchReport,
    GateFigures,
    PeerResult,
    PlanFigures,
    ServedPoint,
    ThroughputPoint,
    VariantResult,
)
from pipeline.bench.stats import (
    NOISY_RELATIVE_SPREAD,
    Percentiles,
    RequestTimeline,
    RunPercentiles,
    Spread,
    percentile,
)
from pipeline.bench.workload import BenchSettings, default_batch_sizes, plan_workload, synthetic_prompts
from pipeline.core.errors import InputError, StageError
from pipeline.core.reporter import RecordingReporter
from pipeline.gate.verdict import GateCheck
from pipeline.runtime.limits import EngineLimits
from pipeline.runtime.sampling import GREEDY

MISTRAL_7B = {
    "architecture": "MistralForCausalLM",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32768,
}

# ---------------------------------------------------------------- statistics


def test_percentile_interpolates_linearly_like_numpy():
    np = pytest.importorskip("numpy")
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0
    rng = random.Random(3)
    values = [rng.expovariate(1.0) for _ in range(101)]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_refuses_nothing_and_out_of_range():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_timeline_gives_ttft_gaps_and_decode_rate():
    t = RequestTimeline(sent=10.0, token_times=(10.5, 10.6, 10.8, 11.0))
    assert t.ttft == pytest.approx(0.5)
    assert t.inter_token == pytest.approx([0.1, 0.2, 0.2])
    assert t.decode_tokens_per_s == pytest.approx(3 / 0.5)
    assert RequestTimeline(sent=0.0, token_times=(1.0,)).decode_tokens_per_s is None


def test_timeline_refuses_impossible_orders():
    with pytest.raises(ValueError, match="before its request"):
        RequestTimeline(sent=2.0, token_times=(1.0,))
    with pytest.raises(ValueError, match="not in order"):
        RequestTimeline(sent=0.0, token_times=(2.0, 1.0))


# ---------------------------------------------------------------- workload


def test_default_batch_sizes_double_up_to_the_profile_max():
    assert default_batch_sizes(1) == (1,)
    assert default_batch_sizes(8) == (1, 2, 4, 8)
    assert default_batch_sizes(23) == (1, 2, 4, 8, 16, 23)


def test_workload_clamps_the_shape_to_the_profile_and_says_so():
    limits = EngineLimits(max_batch_size=4, max_input_len=96, max_seq_len=128)
    workload = plan_workload(limits, BenchSettings(input_len=500, output_len=100, batch_sizes=(2, 4, 16)))
    assert workload.latency.input_len == 96
    assert workload.latency.output_len == 32  # 128 - 96
    assert [c.batch_size for c in workload.throughput] == [2, 4]
    assert workload.adjustments == (
        "input_len 500 -> 96 (max_input_len)",
        "output_len 100 -> 32 (max_seq_len - input_len)",
        "batch sizes 16 skipped (max_batch_size 4)",
    )


def test_every_planned_request_fits_its_profile():
    rng = random.Random(0)
    for _ in range(300):
        max_input_len = rng.randint(1, 400)
        limits = EngineLimits(
            max_batch_size=rng.randint(1, 70),
            max_input_len=max_input_len,
            max_seq_len=max_input_len + rng.randint(2, 300),
        )
        settings = BenchSettings(input_len=rng.randint(1, 1000), output_len=rng.randint(2, 1000))
        workload = plan_workload(limits, settings)
        for case in (workload.latency, workload.warmup, *workload.throughput):
            assert case.input_len <= limits.max_input_len
            limits.check([case.input_len] * case.batch_size, case.output_len)  # raises if beyond


def test_workload_refuses_a_profile_with_no_room_for_two_tokens():
    limits = EngineLimits(max_batch_size=1, max_input_len=10, max_seq_len=11)
    with pytest.raises(InputError, match="room for 1 output token"):
        plan_workload(limits, BenchSettings(input_len=10))


def test_synthetic_prompts_are_deterministic_and_in_the_upper_vocabulary():
    prompts = synthetic_prompts(3, 20, vocab_size=512, seed=7)
    assert prompts == synthetic_prompts(3, 20, vocab_size=512, seed=7)
    assert prompts != synthetic_prompts(3, 20, vocab_size=512, seed=8)
    assert [len(p) for p in prompts] == [20, 20, 20]
    assert all(256 <= t < 512 for p in prompts for t in p)


# ---------------------------------------------------------------- harness (fake runner, fake clock)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeRunner:
    """The Runner protocol with a known cost model: prefill 10 ms per request, decode 2 + 0.5*batch ms/step."""

    def __init__(self, limits: EngineLimits, clock: FakeClock, *, stream: bool = True) -> None:
        self.limits = limits
        self.engine_config = {"pretrained_config": {"vocab_size": 512}}
        self.clock = clock
        self.stream = stream
        self.calls: list[tuple[list[int], int]] = []  # (prompt lengths, max_new_tokens)
        self.streamed: list[bool] = []  # per call: was on_token given

    def generate(self, prompts, *, max_new_tokens, end_id=None, sampling=GREEDY, on_token=None):
        assert end_id is None, "bench must not stop early"
        self.calls.append(([len(p) for p in prompts], max_new_tokens))
        self.streamed.append(on_token is not None)
        self.clock.now += self.cost(0.010 * len(prompts))
        for step in range(max_new_tokens):
            if step:
                self.clock.now += self.cost(0.002 + 0.0005 * len(prompts))
            for i in range(len(prompts)):
                if on_token and self.stream:
                    on_token(i, 300 + step)
        return [[300 + s for s in range(max_new_tokens)] for _ in prompts]

    def cost(self, seconds: float) -> float:
        return seconds


def test_harness_times_batch_1_streamed_and_batches_as_whole_calls():
    clock = FakeClock()
    limits = EngineLimits(max_batch_size=4, max_input_len=64, max_seq_len=96)
    runner = FakeRunner(limits, clock)
    settings = BenchSettings(input_len=32, output_len=11, latency_runs=3, throughput_runs=2, warmup_runs=1)
    timings = measure_engine(
        runner,
        plan_workload(limits, settings),
        seed=0,
        reporter=RecordingReporter(),
        label="x",
        runtime="the fake runner",
        clock=clock,
    )
    lat = timings.latency
    assert (lat.ttft_ms.median, lat.ttft_ms.high, lat.ttft_ms.runs) == (
        pytest.approx(10.0),
        pytest.approx(10.0),
        3,
    )
    assert lat.itl.p99_ms == pytest.approx(2.5) and lat.itl.count == 30
    assert lat.decode_tokens_per_s.median == pytest.approx(1 / 0.0025) and lat.decode_tokens_per_s.runs == 3
    by_batch = {p.batch_size: p for p in timings.throughput}
    assert sorted(by_batch) == [1, 2, 4]
    four = by_batch[4]
    assert four.output_tokens == 44 and four.runs == 2
    assert four.wall_s == pytest.approx(0.040 + 10 * 0.004)
    assert four.output_tokens_per_s.median == pytest.approx(44 / 0.080)
    assert not four.output_tokens_per_s.noisy  # the fake runner costs the same every run
    assert (lat.source, four.source) == (LATENCY_SOURCE, THROUGHPUT_SOURCE)
    # Every figure names the harness and the runtime it drove.
    assert lat.measured_by == four.measured_by == f"{IN_PROCESS_HARNESS} over the fake runner"
    # The fake's cost model: a prefill of 10 ms per request, then a step of 2 + 0.5 x batch ms.
    assert four.ttft_ms.median == pytest.approx(40.0) and four.step_ms.median == pytest.approx(4.0)
    assert four.step_ms.runs == four.ttft_ms.runs == 2
    # warm-up (2 tokens), 3 latency runs, a warm-up per batch size, then two rounds of every batch size
    # (each run a one-token call, the prefill, and the whole call on the same prompts): each batch
    # size's runs span the measurement, so drift shows in its range
    one_round = [([32], 1), ([32], 11), ([32, 32], 1), ([32, 32], 11), ([32] * 4, 1), ([32] * 4, 11)]
    assert [(lens, n) for lens, n in runner.calls] == [
        ([32], 2),
        *[([32], 11)] * 3,
        ([32], 2),
        ([32, 32], 2),
        ([32] * 4, 2),
        *one_round * 2,
    ]
    # Only batch-1 requests stream: streaming a batch through ModelRunnerCpp times its per-request
    # host work (tensorrt_llm/runtime/model_runner_cpp.py, `_stream` -> `_fill_output`).
    assert runner.streamed == [True] * 4 + [False] * 15


def test_harness_never_sends_a_prompt_beyond_max_input_len():
    clock = FakeClock()
    limits = EngineLimits(max_batch_size=2, max_input_len=24, max_seq_len=40)
    runner = FakeRunner(limits, clock)
    workload = plan_workload(limits, BenchSettings(input_len=4096, output_len=4096, latency_runs=1))
    measure_engine(
        runner, workload, seed=0, reporter=RecordingReporter(), label="x", runtime="fake", clock=clock
    )
    assert max(max(lens) for lens, _ in runner.calls) == 24
    assert max(max(lens) + n for lens, n in runner.calls) <= 40
    assert max(len(lens) for lens, _ in runner.calls) == 2


def test_run_batch_checks_limits_before_sending():
    clock = FakeClock()
    runner = FakeRunner(EngineLimits(max_batch_size=2, max_input_len=8, max_seq_len=16), clock)
    with pytest.raises(InputError, match="max_input_len=8"):
        run_batch(runner, [[300] * 9], 4, clock)
    with pytest.raises(InputError, match="max_batch_size=2"):
        run_batch(runner, [[300]] * 3, 4, clock)
    assert runner.calls == []


def test_latency_refuses_a_runner_that_does_not_stream():
    clock = FakeClock()
    runner = FakeRunner(EngineLimits(2, 8, 16), clock, stream=False)
    with pytest.raises(StageError, match="streamed 0 tokens"):
        stream_one(runner, [300] * 4, 4, clock)
    assert run_batch(runner, [[300] * 4] * 2, 4, clock).output_tokens == 8  # batches need no streaming


# ---------------------------------------------------------------- the TensorRT-LLM runner's output loop


class DeviceTensor:
    """A CUDA tensor as Python sees it: indexing gives another device tensor, reading values out
    (.tolist(), int()) is a device-to-host copy and a sync; .cpu() copies the whole tensor once."""

    def __init__(self, data, copies: list[str]) -> None:
        self._data, self._copies = data, copies

    def __getitem__(self, key):
        return DeviceTensor(self._data[key], self._copies)

    def cpu(self):
        self._copies.append("cpu")
        return self._data.clone()

    def tolist(self):
        self._copies.append("tolist")
        return self._data.tolist()

    def __int__(self) -> int:
        self._copies.append("int")
        return int(self._data)


class FakeModelRunnerCpp:
    """TensorRT-LLM 1.2's ModelRunnerCpp.generate as far as the runner uses it, returning what upstream
    returns (tensorrt_llm/runtime/model_runner_cpp.py, NVIDIA/TensorRT-LLM@03832911f05d, the newest 1.x
    stored: `generate`, `_stream`, `_fill_output`): with return_dict and output_sequence_lengths a dict
    whose `output_ids` is an int32 CUDA tensor (batch, num_sequences, max_seq_len) holding prompt + new
    tokens padded with end_id, and `sequence_lengths` an int32 CUDA tensor (batch, num_sequences);
    streaming=True returns a generator of such dicts, one per `await_responses`, each re-padded to
    max_seq_len. Input checks as `_check_inputs` (RuntimeError). Each step every request gains one
    token (a static batch), token = (last token + 1) % 512."""

    def __init__(self, max_batch_size: int, max_input_len: int, max_seq_len: int) -> None:
        self.max_batch_size, self.max_input_len, self.max_seq_len = max_batch_size, max_input_len, max_seq_len
        self.copies: list[str] = []
        self.calls: list[dict] = []

    def generate(
        self, batch_input_ids, *, max_new_tokens=1, end_id=None, pad_id=None, streaming=False, **kwargs
    ):
        import torch

        assert kwargs.get("return_dict") and kwargs.get("output_sequence_lengths")
        self.calls.append({"streaming": streaming, "end_id": end_id, **kwargs})
        lists = [a.tolist() for a in batch_input_ids]
        if len(lists) > self.max_batch_size:
            raise RuntimeError(f"Input batch size ({len(lists)}) exceeds the engine or specified limit")
        longest = max(len(x) for x in lists)
        if longest > self.max_input_len or longest + max_new_tokens > self.max_seq_len:
            raise RuntimeError("Maximum input length exceeds the engine or specified limit")
        sequences = [list(x) for x in lists]

        def step_dict():
            ids = torch.tensor(
                [[seq + [end_id] * (self.max_seq_len - len(seq))] for seq in sequences], dtype=torch.int32
            )
            lengths = torch.tensor([[len(seq)] for seq in sequences], dtype=torch.int32)
            return {
                "output_ids": DeviceTensor(ids, self.copies),
                "sequence_lengths": DeviceTensor(lengths, self.copies),
            }

        def advance():
            for seq in sequences:
                seq.append((seq[-1] + 1) % 512)

        if not streaming:
            for _ in range(max_new_tokens):
                advance()
            return step_dict()

        def stream():
            for _ in range(max_new_tokens):
                advance()
                yield step_dict()

        return stream()


def test_tensorrt_runner_copies_outputs_to_the_host_once_per_step():
    from pipeline.backends.base import NO_END_ID
    from pipeline.backends.trtllm_engine.runner import TensorRTRunner

    fake = FakeModelRunnerCpp(max_batch_size=4, max_input_len=16, max_seq_len=64)
    runner = TensorRTRunner(
        fake, {"pretrained_config": {"vocab_size": 512}}, EngineLimits(4, 16, 64), engine_dir=Path("engine")
    )
    prompts = [[5] * 4, [7] * 3, [9] * 2]
    expected = [[6, 7, 8, 9, 10], [8, 9, 10, 11, 12], [10, 11, 12, 13, 14]]
    streamed: list[tuple[int, int]] = []
    assert (
        runner.generate(prompts, max_new_tokens=5, on_token=lambda i, t: streamed.append((i, t))) == expected
    )
    assert sorted(streamed) == sorted((i, t) for i, tokens in enumerate(expected) for t in tokens)
    # One copy of output_ids and one of sequence_lengths per step, whatever the batch: not two per request.
    assert fake.copies == ["cpu", "cpu"] * 5
    fake.copies.clear()
    assert runner.generate(prompts, max_new_tokens=5) == expected
    assert fake.copies == ["cpu", "cpu"]
    assert [c["streaming"] for c in fake.calls] == [True, False]
    assert {c["end_id"] for c in fake.calls} == {NO_END_ID}


# ---------------------------------------------------------------- memory


def _current_rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024


def test_rss_probe_sees_only_its_own_span():
    spike = b"\x01" * (256 << 20)  # raises the process's lifetime peak, then is freed
    del spike
    lifetime_peak = ProcessRssProbe().stop().peak_bytes
    probe = ProcessRssProbe()
    probe.start()
    resident = _current_rss()
    block = b"\x01" * (64 << 20)  # written, so resident
    reading = probe.stop()
    del block
    assert reading.measure == "process_peak_rss"
    assert reading.peak_bytes - resident >= 60 << 20
    assert reading.peak_bytes < lifetime_peak  # the earlier spike is not this span's peak
    assert "since process start" not in reading.source


def test_rss_probe_says_when_it_could_not_reset(tmp_path):
    (tmp_path / "status").write_text("Name:\tpython\nVmHWM:\t  2048 kB\n")
    probe = ProcessRssProbe(proc_self=str(tmp_path / "missing"))
    probe.start()
    assert "since process start" in probe.stop().source
    probe = ProcessRssProbe(proc_self=str(tmp_path))
    (tmp_path / "clear_refs").mkdir()  # not writable as a file: the reset fails
    probe.start()
    reading = probe.stop()
    assert reading.peak_bytes == 2048 * 1024
    assert "since process start" in reading.source


def test_gpu_probe_without_a_gpu_is_a_missing_dependency():
    pytest.importorskip("pynvml")
    from pipeline.backends import BACKENDS
    from pipeline.core.errors import MissingDependencyError

    try:
        probe = BACKENDS["trtllm-engine"].memory_probe(served=False)
    except MissingDependencyError as exc:
        assert "NVIDIA GPU and driver" in exc.message
    else:  # a GPU host: the probe reads the device
        probe.start()
        assert probe.stop().peak_bytes > 0


class FakeNvml:
    """pynvml (nvidia-ml-py) as the probe calls it: nvmlDeviceGetMemoryInfo(h).used in bytes and
    nvmlDeviceGetUtilizationRates(h).gpu in percent of the last sample period (nvmlUtilization_t, NVML
    API reference, docs.nvidia.com/deploy/nvml-api/structnvmlUtilization__t.html); a device without
    utilization counters raises NVMLError (NVML_ERROR_NOT_SUPPORTED)."""

    class NVMLError(Exception):
        pass

    def __init__(self, utilization: list[int] | None) -> None:
        self.utilization = utilization
        self.calls = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetMemoryInfo(self, handle):
        from types import SimpleNamespace

        return SimpleNamespace(used=(1 << 30) + self.calls * 4096, total=80 << 30, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle):
        from types import SimpleNamespace

        if self.utilization is None:
            raise self.NVMLError("Not Supported")
        self.calls += 1
        return SimpleNamespace(gpu=self.utilization[self.calls % len(self.utilization)], memory=10)


def _probe_with(monkeypatch, nvml: FakeNvml) -> MemoryReading:
    import sys
    import time

    from pipeline.bench import memory

    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(memory, "_visible_device_handle", lambda _nvml: "device-0")
    probe = memory.NvmlDeviceProbe(interval_s=0.001)
    probe.start()
    deadline = time.monotonic() + 10
    while nvml.calls < 6 and nvml.utilization is not None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.01)  # the memory samples go on either way
    return probe.stop()


def test_gpu_probe_samples_utilization_beside_memory(monkeypatch):
    reading = _probe_with(monkeypatch, FakeNvml([20, 80]))
    assert reading.measure == "gpu_device_used" and reading.peak_bytes > 1 << 30
    u = reading.gpu_utilization
    assert u is not None and u.samples >= 6 and u.max_percent == 80
    assert 20 < u.mean_percent < 80 and "nvmlDeviceGetUtilizationRates" in u.source
    # A device whose NVML has no utilization counters still gets its memory measured.
    reading = _probe_with(monkeypatch, FakeNvml(None))
    assert reading.gpu_utilization is None and reading.peak_bytes >= 1 << 30


# ---------------------------------------------------------------- comparison and report


def test_published_estimate_applies_only_to_mistral_7b_on_a100_40gb():
    assert published_estimate(pretrained_config=MISTRAL_7B, target="a100-40gb").applies
    assert not published_estimate(pretrained_config=MISTRAL_7B, target="h100-80gb").applies
    tiny = {**MISTRAL_7B, "hidden_size": 64}
    assert not published_estimate(pretrained_config=tiny, target="a100-40gb").applies


def _plan(ceiling: float = 200.0) -> PlanFigures:
    return PlanFigures(
        decode_ceiling_tokens_per_s=ceiling,
        bytes_read_per_token=int(1e9 / ceiling),
        kv_bytes_per_token=1000,
        bandwidth_bytes_per_s=1e9,
        memory_estimate_bytes=10 << 30,
        largest_batch_at_max_seq_len=8,
        source="test plan",
    )


def test_plan_figures_come_from_the_plan_module(in_repo_root):
    from pipeline.bench.reference import plan_figures
    from pipeline.facts.architecture import KNOWN_ARCHITECTURES
    from pipeline.facts.config import Precision, load_config
    from pipeline.facts.targets import TARGETS
    from pipeline.planning.memory import plan_memory

    config = load_config(in_repo_root / "pipeline.toml")
    arch = KNOWN_ARCHITECTURES["mistralai/Mistral-7B-Instruct-v0.3"]
    figures = plan_figures(config, arch, "int8_sq", "throughput")
    plan = plan_memory(arch, Precision.int8_sq, "fp16", TARGETS["a100-40gb"], config.profile("throughput"))
    assert figures.decode_ceiling_tokens_per_s == plan.decode_ceiling_tok_s
    assert figures.memory_estimate_bytes == plan.weight_bytes + plan.allowance_bytes + plan.kv_budget_bytes
    assert figures.largest_batch_at_max_seq_len == plan.largest_batch
    # batch 1 with no context is the plan's batch-1 ceiling; a full context reads the KV cache as well.
    # The plan rounds its ceilings to 0.1 token/s (planning/memory.py): half of that apart at most.
    rounding = 0.05
    assert figures.batch_ceiling_tokens_per_s(1, 0) == pytest.approx(plan.decode_ceiling_tok_s, abs=rounding)
    assert figures.batch_ceiling_tokens_per_s(1, 2048) == pytest.approx(
        plan.decode_ceiling_at_max_seq_tok_s, abs=rounding
    )
    # more requests share one read of the weights: higher ceiling, but less than linear
    b1, b8 = figures.batch_ceiling_tokens_per_s(1, 512), figures.batch_ceiling_tokens_per_s(8, 512)
    assert b1 < b8 < 8 * b1


def test_ratios_are_taken_only_against_comparable_figures():
    plan = _plan()
    gpu = MemoryReading(measure="gpu_device_used", peak_bytes=5 << 30, source="nvml")
    rss = MemoryReading(measure="process_peak_rss", peak_bytes=5 << 30, source="rss")
    applies = published_estimate(pretrained_config=MISTRAL_7B, target="a100-40gb")
    point = ThroughputPoint(
        batch_size=4,
        input_len=100,
        output_len=20,
        runs=1,
        output_tokens=80,
        wall_s=1.0,
        output_tokens_per_s=Spread.of([80.0]),
        ttft_ms=Spread.of([100.0]),
        step_ms=Spread.of([11.0]),
        measured_by="test harness",
        source="test",
    )
    r = ratios(
        decode_tokens_per_s=100.0,
        throughput=[point],
        memory=gpu,
        plan=plan,
        published=applies,
        precision="int8_sq",
    )
    assert (r.decode_vs_ceiling, r.peak_memory_vs_estimate) == (0.5, 0.5)
    (batch,) = r.throughput_vs_ceiling
    ceiling = 4 * 1e9 / (5_000_000 + 4 * 1000 * 110)
    assert batch.ceiling_tokens_per_s == pytest.approx(ceiling)
    assert batch.measured_vs_ceiling == pytest.approx(80 / ceiling)
    assert r.decode_vs_published == pytest.approx(100 / 117)
    r = ratios(
        decode_tokens_per_s=100.0, throughput=[], memory=rss, plan=plan, published=applies, precision="fp16"
    )
    assert r.peak_memory_vs_estimate is None and r.decode_vs_published is None


def _variant(
    precision: str, profile: str, plan: PlanFigures, runner: type[FakeRunner] = FakeRunner, **settings
) -> VariantResult:
    clock = FakeClock()
    limits = EngineLimits(max_batch_size=4, max_input_len=32, max_seq_len=48)
    shape = {"input_len": 64, "output_len": 8, "latency_runs": 2, "throughput_runs": 2, **settings}
    timings = measure_engine(
        runner(limits, clock),
        plan_workload(limits, BenchSettings(**shape)),
        seed=0,
        reporter=RecordingReporter(),
        label=precision,
        runtime="the fake runner",
        clock=clock,
    )
    memory = MemoryReading(measure="process_peak_rss", peak_bytes=3 << 30, source="peak RSS")
    published = published_estimate(pretrained_config={"vocab_size": 512}, target="cpu")
    return VariantResult(
        backend="trtllm-engine",
        precision=precision,
        profile=profile,
        runtime="the fake runner",
        engine_dir="/e",
        limits={"max_batch_size": 4, "max_input_len": 32, "max_seq_len": 48},
        adjustments=("input_len 64 -> 32 (max_input_len)",),
        latency=timings.latency,
        throughput=timings.throughput,
        memory=memory,
        plan=plan,
        ratios=ratios(
            decode_tokens_per_s=timings.latency.decode_tokens_per_s.median,
            throughput=timings.throughput,
            memory=memory,
            plan=plan,
            published=published,
            precision=precision,
        ),
    )


def _gate(*checks: tuple[str, float, float, str]) -> GateFigures:
    made = [
        GateCheck(
            name=name,
            value=value,
            threshold=threshold,
            direction=direction,
            passed=value <= threshold if direction == "max" else value >= threshold,
        )
        for name, value, threshold, direction in checks
    ]
    return GateFigures(verdict=all(c.passed for c in made), checks=tuple(made), source="gate.json here")


def _machine(load_before: float = 0.5, cpus_mhz: float | None = 2000.0) -> MachineState:
    quiet = MachineSnapshot(load_1_5_15=(load_before, 0.4, 0.3), cpu_mhz=cpus_mhz)
    return MachineState(cpu_count=2, cpu_model="Test CPU", before=quiet, after=quiet, source="test machine")


def test_report_writes_json_markdown_and_plots(tmp_path: Path):
    plan = _plan(800.0)
    sq = _variant("int8_sq", "throughput", plan).model_copy(
        update={
            "gate": _gate(("perplexity_increase_pct", 1.5, 5.0, "max"), ("top1_agreement", 0.97, 0.9, "min"))
        }
    )
    # A format with a check the others lack, and its own threshold: the table grows a column, no edit.
    awq = _variant("int4_awq", "throughput", _plan(1500.0)).model_copy(
        update={
            "gate": _gate(("perplexity_increase_pct", 9.0, 8.0, "max"), ("kv_scale_error", 0.01, 0.05, "max"))
        }
    )
    report = BenchReport(
        created_at=datetime(2026, 11, 26, tzinfo=timezone.utc),
        model="tiny-mistral",
        target="cpu",
        plan_applies=True,  # as on a GPU target: every figure stands beside the plan's
        host={"cpu": "test"},
        machine=_machine(),
        settings=BenchSettings(),
        variants=(sq, _variant("int8_wo", "latency", _plan(1e6)), awq),
        published=published_estimate(pretrained_config={"vocab_size": 512}, target="cpu"),
    )
    paths = write_bench_report(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["report_version"] == BENCH_REPORT_VERSION
    assert BenchReport.model_validate(data) == report
    md = paths["markdown"].read_text()
    sq = report.variants[0]
    assert (
        f"| trtllm-engine/int8_sq/throughput | {IN_PROCESS_HARNESS} over the fake runner | 2 | {sq.latency.ttft_ms.median:.2f} ("
        in md
    )
    assert f"| 800.0 | {sq.latency.decode_tokens_per_s.median / 800:.2f}x |" in md  # beside the ceiling
    four = {r.batch_size: r for r in sq.ratios.throughput_vs_ceiling}[4]
    assert f"| {four.ceiling_tokens_per_s:.1f} | {four.measured_vs_ceiling:.2f}x |" in md
    wo = report.variants[1]
    assert f"| 1000000.0 | {wo.ratios.decode_vs_ceiling:.1e}x |" in md  # far below a ceiling: still a figure
    wo_rows = [line for line in md.splitlines() if line.startswith("| trtllm-engine/int8_wo/latency | ")]
    # the recommendation's per-variant row, latency, a throughput row per batch size (1, 2, 4), memory, formats
    assert len(wo_rows) == 1 + 1 + 3 + 1 + 1
    assert (
        "| trtllm-engine/int8_sq/throughput | process_peak_rss | 3.00 GiB | 10.00 GiB | n/a | n/a |" in md
    )  # RSS: no ratio
    # The formats table: one row per engine, a column per gate check any engine has.
    formats = md[md.index("## Formats side by side") :].splitlines()
    header = next(line for line in formats if line.startswith("| engine |"))
    assert header.endswith("| perplexity_increase_pct | top1_agreement | kv_scale_error | gate |")
    best_sq = max(p.output_tokens_per_s.median for p in sq.throughput)
    decode_sq = sq.latency.decode_tokens_per_s.median
    assert (
        f"| trtllm-engine/int8_sq/throughput | {decode_sq:.1f} ({decode_sq:.1f}-{decode_sq:.1f}) | 800.0 | "
        f"{sq.ratios.decode_vs_ceiling:.2f}x | {best_sq:.1f} ({best_sq:.1f}-{best_sq:.1f}) at batch 4 "
        "| 3.00 GiB | 10.00 GiB | n/a | 1,000 | 8 "
        "| 1.5 (<= 5) pass | 0.97 (>= 0.9) pass | n/a | pass |"
    ) in formats
    assert any(
        line.startswith("| trtllm-engine/int4_awq/throughput |")
        and line.endswith("| 9 (<= 8) FAIL | n/a | 0.01 (<= 0.05) pass | FAIL |")
        for line in formats
    )
    assert any(
        line.startswith("| trtllm-engine/int8_wo/latency |")
        and line.endswith("| n/a | n/a | n/a | not run |")
        for line in formats
    )
    # Every figure says where it comes from, in bench.json and in bench.md.
    assert data["variants"][0]["latency"]["source"] == sq.latency.source
    assert {p["source"] for p in data["variants"][0]["throughput"]} == {sq.throughput[0].source}
    assert data["variants"][0]["memory"]["source"] == "peak RSS" and data["variants"][0]["gate"]["source"]
    sources = md[md.index("## Where each figure comes from") :]
    for line in (
        f"- latency (TTFT, inter-token, decode tokens/s at batch 1): {sq.latency.source}",
        f"- throughput (in process): {sq.throughput[0].source}",
        "- peak memory: peak RSS",
        "- plan figures: test plan",
        "- gate figures: gate.json here",
    ):
        assert line in sources
    assert "applies only to Mistral 7B INT8 on a100-40gb" in md
    assert "- trtllm-engine/int8_sq/throughput: input_len 64 -> 32 (max_input_len)" in md
    from matplotlib.image import imread

    # One figure per question, each 1000 px wide (the width a report is read at), none a strip.
    for kind in ("pareto_plot", "throughput_plot", "memory_plot", "gate_plot"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = imread(paths[kind]).shape
        assert width == 1000 and 300 < height < 1000
    # Each plot in bench.md has one line under it saying what it answers.
    lines = md.splitlines()
    images = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert len(images) == 4
    for i in images:
        assert lines[i + 1] == "" and lines[i + 2].startswith("*") and lines[i + 2].endswith(".*")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "bench.json",
        "bench.md",
        "gate.png",
        "memory.png",
        "pareto.png",
        "throughput.png",
    ]


def test_percentiles_model_is_in_milliseconds():
    p = Percentiles.of_seconds([0.001, 0.002, 0.003])
    assert (p.p50_ms, p.count) == (pytest.approx(2.0), 3)


# ---------------------------------------------------------------- finding the engines to measure


def _fake_builds(work_dir: Path, **filters):
    """The embedded config and a store whose selected build tasks ran as stand-in stages."""
    from fake_stages import fake_stages

    from pipeline.core.store import ArtifactStore
    from pipeline.execution.driver import execute
    from pipeline.facts.config import load_config
    from pipeline.planning.tasks import plan_tasks, select_tasks

    config = load_config(None)
    store = ArtifactStore(work_dir)
    stages = fake_stages()
    tasks = select_tasks(plan_tasks(config), {"build"}, **filters)
    assert execute(config, store, tasks, reporter=RecordingReporter(), stages=stages).error is None
    return config, store, stages


def test_only_up_to_date_engines_are_benchmarked(tmp_path: Path, in_repo_root):
    from pipeline.bench.run import find_engines

    config, store, stages = _fake_builds(tmp_path / "work", precisions={"int8_sq"}, profiles={"latency"})
    reporter = RecordingReporter()
    found = find_engines(config, store, reporter=reporter, stages=stages)
    engines = found.engines
    assert found.model_dir is not None and found.model_dir.name == "model"
    assert [(e.precision, e.profile) for e in engines] == [("int8_sq", "latency")]
    assert engines[0].engine_dir.parent.parent.name == "latency" and engines[0].engine_dir.name == "engine"
    assert (
        "the trtllm-engine/int8_wo/throughput engine is missing (never built): not benchmarked"
        in reporter.text()
    )

    # the profile changes: the built engine no longer matches the config and is not measured
    latency, throughput = config.profiles
    changed = config.model_copy(
        update={"profiles": (latency.model_copy(update={"max_input_len": 160}), throughput)}
    )
    with pytest.raises(InputError, match="no engine of tiny-mistral for cpu") as info:
        find_engines(changed, store, reporter=RecordingReporter(), stages=stages)
    assert "trtllm-pipeline build" in info.value.hint


def test_bench_command_without_engines_exits_2_and_says_to_build(tmp_path, in_repo_root, capsys):
    from pipeline.cli import main

    assert main(["bench", "--work-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no engine of tiny-mistral for cpu is built and up to date" in err
    assert "run `trtllm-pipeline build`" in err
    assert not (tmp_path / "reports").exists()


# ---------------------------------------------------------------- end to end: reference engines


@pytest.fixture(scope="module")
def reference_engines(tmp_path_factory, tiny_model_dir):
    """A store holding real builds of both backends of the embedded config (int8_wo, both profiles),
    played on the CPU (`reference`: the engine path's checkpoint; `reference-pytorch`: the unified one
    with its LLM API options) and built by the build stage, and the real gate's verdict on the engine
    backend's throughput build.

    fetch and calibrate are stand-ins that copy the tiny model and the checkpoint of the task's
    backend's kind (exported by the pipeline's own export, shared with the other tests).
    """
    import shutil

    from fake_stages import StandIn
    from tiny_checkpoints import tiny_checkpoint

    from pipeline.core.store import ArtifactStore
    from pipeline.execution.driver import execute
    from pipeline.facts.config import BackendSection, Precision, load_config
    from pipeline.planning.tasks import plan_tasks, select_tasks
    from pipeline.stages import STAGES
    from pipeline.stages.base import StageOutcome

    def fetch(ctx):
        shutil.copytree(tiny_model_dir, ctx.out_dir / "model")
        return StageOutcome(summary="tiny model")

    def calibrate(ctx):
        kind = ctx.backend.checkpoint
        checkpoint = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo", checkpoint=kind)
        shutil.copytree(checkpoint, ctx.out_dir / "checkpoint")
        return StageOutcome(summary=f"int8_wo {kind} checkpoint")

    stages = {**STAGES, "fetch": StandIn("fetch", fetch), "calibrate": StandIn("calibrate", calibrate)}
    config = load_config(None)
    config = config.model_copy(
        update={
            "backends": tuple(
                BackendSection(name=name, precisions=(Precision.int8_wo,))
                for name in ("trtllm-engine", "trtllm-pytorch")
            )
        }
    )
    store = ArtifactStore(tmp_path_factory.mktemp("bench-work"))
    for selected, profiles, backends in (
        ({"build"}, None, None),
        ({"gate"}, {"throughput"}, {"trtllm-engine"}),
    ):
        tasks = select_tasks(plan_tasks(config), selected, profiles=profiles, backends=backends)
        report = execute(config, store, tasks, reporter=RecordingReporter(), stages=stages)
        assert report.error is None, report.error
    return config, store, stages


@pytest.fixture
def one_torch_thread():
    """Tiny matrices on a shared 2-core machine run several times faster on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bench_on_cpu_reference_produces_every_figure_and_plot(reference_engines, tmp_path, one_torch_thread):
    """Both backends' builds in one report: every row labelled backend/precision/profile and naming
    the runtime that ran it; each figure there for each."""
    from pipeline.bench.run import run_bench

    config, store, stages = reference_engines
    # Prompts longer than either profile allows: the harness must clamp them, and the reference
    # runtime (which enforces the engine's limits) would raise on any request beyond them.
    settings = BenchSettings(
        input_len=4096, output_len=6, latency_runs=2, throughput_runs=2, batch_sizes=(1, 2, 8, 16)
    )
    reporter = RecordingReporter()
    report, paths = run_bench(
        config, store, settings=settings, out_dir=tmp_path / "bench", reporter=reporter, stages=stages
    )

    labels = [v.label for v in report.variants]
    assert sorted(labels) == [
        f"{backend}/int8_wo/{profile}"
        for backend in ("trtllm-engine", "trtllm-pytorch")
        for profile in ("latency", "throughput")
    ]
    by_label = {v.label: v for v in report.variants}
    # Each build was run by the reference runtime playing its backend, and each row says so.
    runtimes = {v.backend: v.runtime for v in report.variants}
    assert runtimes["trtllm-engine"].endswith("on the CPU, playing trtllm-engine")
    assert runtimes["trtllm-pytorch"].endswith("on the CPU, playing trtllm-pytorch")
    for v in report.variants:
        assert v.latency.measured_by == f"{IN_PROCESS_HARNESS} over {v.runtime}"
        assert {p.measured_by for p in v.throughput} == {v.latency.measured_by}
    pytorch = by_label["trtllm-pytorch/int8_wo/throughput"]
    # The pytorch build's limits are its LLM API options' (the same profile's as the engine's).
    assert pytorch.limits == by_label["trtllm-engine/int8_wo/throughput"].limits
    # The gate that judged the engine backend's build is not the PyTorch backend's (none has run).
    assert pytorch.gate is None
    latency, throughput = (
        by_label["trtllm-engine/int8_wo/latency"],
        by_label["trtllm-engine/int8_wo/throughput"],
    )
    assert (latency.latency.input_len, latency.latency.output_len) == (192, 6)
    assert (throughput.latency.input_len, throughput.latency.output_len) == (96, 6)
    assert [p.batch_size for p in latency.throughput] == [1]
    assert [p.batch_size for p in throughput.throughput] == [1, 2, 8]
    assert "batch sizes 16 skipped (max_batch_size 8)" in throughput.adjustments
    for v in report.variants:
        lat = v.latency
        assert lat.runs == 2 and lat.ttft_ms.runs == 2 and lat.itl.count == 2 * (lat.output_len - 1)
        assert 0 < lat.ttft_ms.low <= lat.ttft_ms.median <= lat.ttft_ms.high
        assert 0 < lat.itl.p50_ms <= lat.itl.p90_ms <= lat.itl.p99_ms
        assert lat.decode_tokens_per_s.low > 0
        for point in v.throughput:
            assert point.output_tokens == point.batch_size * point.output_len  # no early stop
            rate = point.output_tokens_per_s
            assert rate.runs == 2 and rate.low <= rate.median <= rate.high
            # runs=2: the median is the mean of the two runs, and the wall time's median is taken apart
            assert rate.median == pytest.approx((rate.low + rate.high) / 2)
        assert v.memory is not None and v.memory.measure == "process_peak_rss"
        assert v.memory.peak_bytes > 50 << 20  # at least the interpreter and torch
        assert v.plan is not None and v.plan.decode_ceiling_tokens_per_s > 0
        assert v.ratios.decode_vs_ceiling == pytest.approx(
            lat.decode_tokens_per_s.median / v.plan.decode_ceiling_tokens_per_s
        )
        assert [r.batch_size for r in v.ratios.throughput_vs_ceiling] == [p.batch_size for p in v.throughput]
        assert v.ratios.peak_memory_vs_estimate is None  # RSS is not comparable with a GPU estimate
        assert v.latency.source == LATENCY_SOURCE and {p.source for p in v.throughput} == {THROUGHPUT_SOURCE}
    # The gate that judged the throughput engine stands beside its figures; the latency one has none.
    assert latency.gate is None
    assert throughput.gate is not None and throughput.gate.checks
    assert "gate.json" in throughput.gate.source
    assert {c.name for c in throughput.gate.checks} >= {"perplexity_increase_pct", "top1_agreement"}
    assert not report.published.applies and report.variants[0].ratios.decode_vs_published is None
    assert report.runtime == "; ".join(dict.fromkeys(v.runtime for v in report.variants))
    assert report.host["torch_threads"] == "1"
    # The machine as the OS saw it before and after; the reference backend reads no GPU clock.
    machine = report.machine
    assert (
        machine.cpu_count >= 1 and machine.before.load_1_5_15 is not None and machine.after.gpu_clocks == ()
    )

    assert BenchReport.model_validate_json(paths["json"].read_text()) == report
    md = paths["markdown"].read_text()
    for section in (
        "## Latency (batch 1)",
        "## Throughput",
        "## Peak memory",
        "## Formats side by side",
        "## Where each figure comes from",
        "## Reference: a published",
    ):
        assert section in md
    formats = md[md.index("## Formats side by side") :]
    assert "| trtllm-engine/int8_wo/latency |" in formats and "| not run |" in formats
    # One bench.md: every table has a row for each backend's build, with what measured it.
    for section, first in (("## Latency", "## Throughput"), ("## Throughput", "## Served")):
        rows = md[md.index(section) : md.index(first, md.index(section) + 1)].splitlines()
        for v in report.variants:
            assert any(row.startswith(f"| {v.label} | {v.latency.measured_by} |") for row in rows), v.label
    for section in ("## Peak memory", "## Formats side by side", "## Recommendation"):
        table = md[md.index(section) :]
        assert all(f"| {label} |" in table for label in labels)
    data = json.loads(paths["json"].read_text())
    assert data["report_version"] == BENCH_REPORT_VERSION
    assert [(v["backend"], v["runtime"]) for v in data["variants"]] == [
        (v.backend, v.runtime) for v in report.variants
    ]
    verdict = "pass" if throughput.gate.verdict else "FAIL"
    assert any(
        line.startswith("| trtllm-engine/int8_wo/throughput |") and line.endswith(f"| {verdict} |")
        for line in formats.splitlines()
    )
    for kind in ("pareto_plot", "throughput_plot", "memory_plot", "gate_plot"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trtllm-engine/int8_wo/throughput: input_len 4096 -> 96 (max_input_len)" in reporter.text()
    # The reference backend runs on the CPU: the plan (a model of the target GPU) is not set beside it.
    assert not report.plan_applies and "they are left out (n/a)" in md


def test_two_benches_in_a_row_overlap_or_mark_what_moved(reference_engines, tmp_path, one_torch_thread):
    """Issue 23: two back-to-back benches report ranges that overlap, or the second marks the figure
    noisy with the first's median. The second runs on a clock three times slow, a machine that moved
    between the benches by more than any range of three runs spans."""
    import time

    from pipeline.bench.run import run_bench

    config, store, stages = reference_engines
    out = tmp_path / "bench"
    settings = BenchSettings(output_len=6, latency_runs=3, throughput_runs=3)
    select = {"backends": {"trtllm-engine"}, "profiles": {"latency"}, "stages": stages}
    first, _ = run_bench(
        config, store, settings=settings, out_dir=out, reporter=RecordingReporter(), **select
    )
    assert first.previous is None
    second, paths = run_bench(
        config,
        store,
        settings=settings,
        out_dir=out,
        reporter=RecordingReporter(),
        clock=lambda: 3 * time.perf_counter(),
        **select,
    )
    before, after = _figures(first), _figures(second)
    assert second.previous is not None and second.previous.created_at == first.created_at
    assert second.previous.figures_compared == len(after) == 2 + 3  # latency; batch 1 (max_batch_size 1)
    for name, figure in after.items():
        overlaps = figure.low <= before[name].high and before[name].low <= figure.high
        assert overlaps or (figure.noisy and figure.apart_from == before[name]), name
    assert second.previous.figures_apart >= 1
    assert "figures of the same engines and shapes lie apart from it" in paths["markdown"].read_text()
    assert BenchReport.model_validate_json(paths["json"].read_text()) == second


@pytest.mark.triton
@pytest.mark.slow
def test_served_mode_measures_a_real_triton_server(reference_engines, tiny_model_dir, tmp_path):
    """The throughput engine in a repository written by the publish code, served by the real tritonserver,
    measured through --server-url by aiperf: batch 1 from one client, then each client count."""
    from pipeline.bench.run import find_engines, run_bench
    from pipeline.core.hashing import sha256_file
    from pipeline.serving.render import RepositoryValues
    from pipeline.serving.repository import ENGINE_SUBDIR, TOKENIZER_SUBDIR, write_repository
    from pipeline.serving.server import TritonServer

    config, store, stages = reference_engines
    engine_backend = {"trtllm-engine"}
    (engine,) = find_engines(
        config,
        store,
        reporter=RecordingReporter(),
        profiles={"throughput"},
        backends=engine_backend,
        stages=stages,
    ).engines
    values = RepositoryValues(
        triton_max_batch_size=8,
        triton_backend="python",
        engine_dir=ENGINE_SUBDIR,
        tokenizer_dir=TOKENIZER_SUBDIR,
        decoupled_mode=True,
        kv_cache_free_gpu_mem_fraction=0.9,
        max_queue_delay_microseconds=100,
        enable_kv_cache_reuse=False,
        enable_chunked_context=True,
        preprocessing_instance_count=1,
        postprocessing_instance_count=1,
    )
    write_repository(
        tmp_path / "repository",
        values,
        engine_dir=engine.engine_dir,
        engine_sha256={p.name: sha256_file(p) for p in engine.engine_dir.iterdir()},
        tokenizer_dir=tiny_model_dir,
        tokenizer_sha256={p.name: sha256_file(p) for p in tiny_model_dir.iterdir() if p.is_file()},
    )
    settings = BenchSettings(
        input_len=500,
        output_len=12,
        latency_runs=2,
        concurrency=(3,),
        requests_per_client=2,
        served_runs=1,  # the spread over runs is tested with --served (test_bench_aiperf.py)
    )
    with TritonServer(tmp_path / "repository", work_dir=tmp_path / "server") as server:
        report, paths = run_bench(
            config,
            store,
            settings=settings.model_copy(update={"server_url": server.url}),
            out_dir=tmp_path / "bench",
            reporter=RecordingReporter(),
            profiles={"throughput"},
            backends=engine_backend,
            stages=stages,
        )
    (variant,) = report.variants
    assert variant.throughput == ()  # the engine ran in the server, not here
    assert variant.latency.input_len == 96 and variant.latency.ttft_ms.runs == 2
    assert variant.latency.measured_by.startswith("aiperf 0.13")
    # every request streamed all 12 tokens (end_id -1: no early stop), as the tokenizer counts them
    assert [(p.concurrency, p.runs, p.requests, p.output_tokens) for p in variant.served] == [(3, 1, 6, 72)]
    assert all(p.output_tokens_per_s.low > 0 and p.ttft.count == p.requests for p in variant.served)
    assert variant.memory is None  # a CPU server's memory is not observable from the client
    md = paths["markdown"].read_text()
    assert (
        f"| trtllm-engine/int8_wo/throughput | {variant.served[0].measured_by} | 3 | 1 | 6 |" in md
        and "not observable" in md
    )
    assert "Not measured: the engine ran in the server" in md


def test_served_mode_needs_one_engine(tmp_path, in_repo_root, monkeypatch):
    from pipeline.bench.run import run_bench

    # An aiperf on PATH, as the bench looks for it first; the selection is refused before it runs.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "aiperf").write_text("#!/bin/sh\nexit 99\n")
    (tmp_path / "bin" / "aiperf").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    config, store, stages = _fake_builds(tmp_path / "work", precisions={"int8_sq"})
    with pytest.raises(InputError, match="2 are selected") as info:
        run_bench(
            config,
            store,
            settings=BenchSettings(server_url="http://127.0.0.1:9"),
            out_dir=tmp_path / "bench",
            reporter=RecordingReporter(),
            stages=stages,
        )
    assert "--precision and --profile" in info.value.hint
    assert not (tmp_path / "bench").exists()


def test_served_prompts_fit_the_input_limit_after_a_round_trip():
    from pipeline.bench.served import text_prompts

    class WordTokenizer:
        """Each id decodes to a word of id % 3 + 1 characters; encoding counts one token per character."""

        def decode(self, ids, skip_special_tokens=True):
            return "".join("x" * (i % 3 + 1) for i in ids)

        def encode(self, text):
            return list(range(len(text)))

    prompts = text_prompts(WordTokenizer(), 5, 20, vocab_size=512, seed=0)
    assert len(prompts) == 5
    assert all(0 < len(WordTokenizer().encode(p)) <= 20 for p in prompts)
    assert min(len(p) for p in prompts) >= 10  # shortened to fit, not emptied


def test_server_error_events_are_stage_errors():
    from pipeline.serving.client import server_sent_events

    lines = [b"", b'data: {"text_output": "a"}', b"", b'data: {"error": "input too long"}']
    events = server_sent_events(
        lines, stage="bench", url="http://127.0.0.1:9/v2/models/ensemble/generate_stream"
    )
    assert next(events) == {"text_output": "a"}
    with pytest.raises(StageError, match="the server answered with an error: input too long"):
        next(events)


# --- which GPU the NVML probe reads ---------------------------------------------------------------
# CUDA numbers GPUs fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML by PCI bus, and
# CUDA_VISIBLE_DEVICES may hold indices, UUIDs or UUID prefixes (torch/cuda/__init__.py, torch 2.13:
# _parse_visible_devices, _transform_uuid_to_ordinals; _raw_device_uuid_nvml reads NVML's "GPU-..." UUIDs).


class BusOrderNvml:
    """NVML's lookups over GPUs in PCI bus order."""

    def __init__(self, uuids: list[str]) -> None:
        self.uuids = uuids

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return self.uuids[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        assert uuid in self.uuids, f"NVML has no GPU {uuid}"
        return uuid


BUS_ORDER = ["GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-1111-1111-1111-111111111111"]


def test_gpu_probe_reads_the_gpu_cuda_uses_not_the_nvml_index():
    from pipeline.bench.memory import _visible_device_handle
    from pipeline.core.errors import MissingDependencyError

    nvml = BusOrderNvml(BUS_ORDER)
    # Two GPUs, the faster one second on the bus: CUDA's default order makes it device 0, so
    # CUDA_VISIBLE_DEVICES=1 is the first one on the bus, while NVML's index 1 is the second.
    env = {"CUDA_VISIBLE_DEVICES": "1"}
    assert _visible_device_handle(nvml, env, cuda_uuid=lambda: BUS_ORDER[0]) == BUS_ORDER[0]
    # Without CUDA to ask: a full UUID names the GPU, and PCI_BUS_ID order makes indices agree.
    no_cuda = lambda: None  # noqa: E731
    assert _visible_device_handle(nvml, {"CUDA_VISIBLE_DEVICES": BUS_ORDER[1]}, no_cuda) == BUS_ORDER[1]
    ordered = {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert _visible_device_handle(nvml, ordered, no_cuda) == BUS_ORDER[1]
    for ambiguous in ({"CUDA_VISIBLE_DEVICES": "1"}, {"CUDA_VISIBLE_DEVICES": "GPU-bbbbbbbb"}):
        with pytest.raises(MissingDependencyError, match="cannot tell which GPU"):
            _visible_device_handle(nvml, ambiguous, no_cuda)


# ---------------------------------------------------------------- --nsys


def test_nsys_records_the_same_bench_command_less_the_flag():
    import sys

    from pipeline.bench.nsys import profiled_argv

    argv = profiled_argv(
        "/opt/nsys/bin/nsys", Path("/r/out"), ["bench", "--nsys", "--work-dir", "w", "--batch-size", "2"]
    )
    # Long options take `=VALUE` (Nsight Systems user guide, "Command Line Options").
    assert argv == [
        "/opt/nsys/bin/nsys",
        "profile",
        "--output=/r/out/bench",
        "--force-overwrite=true",
        "--trace=cuda,nvtx,osrt",
        sys.executable,
        "-m",
        "pipeline",
        "bench",
        "--work-dir",
        "w",
        "--batch-size",
        "2",
    ]


def test_bench_nsys_without_nsys_on_path_is_one_line_and_exit_3(tmp_path, in_repo_root, capsys, monkeypatch):
    from pipeline.cli import main

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["bench", "--nsys", "--work-dir", str(tmp_path / "work")]) == 3
    err = capsys.readouterr().err
    assert "ERROR --nsys records the run with Nsight Systems, and no `nsys` is on PATH" in err
    assert "Traceback" not in err and not (tmp_path / "work").exists()


def test_bench_nsys_runs_this_bench_under_nsys_profile(tmp_path, in_repo_root, capsys, monkeypatch):
    """A stand-in `nsys` that records its arguments, writes the report file nsys would, and exits as
    told: the child is not launched."""
    import sys

    from pipeline.cli import main

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nsys = bin_dir / "nsys"
    nsys.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$@" > "$NSYS_ARGS"\n'
        'env > "$NSYS_ARGS.env"\n'
        'for a in "$@"; do case "$a" in --output=*) touch "${a#--output=}.nsys-rep";; esac; done\n'
        'exit "$NSYS_EXIT"\n'
    )
    nsys.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("NSYS_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("NSYS_EXIT", "0")
    out = tmp_path / "out"
    args = ["bench", "--work-dir", str(tmp_path / "work"), "--out", str(out), "--nsys", "--latency-runs", "2"]
    from mpi_singleton import PMIX_VARIABLES, singleton_mpi_parent

    with singleton_mpi_parent():  # as the bench leaves its process after importing TensorRT-LLM
        assert main(args) == 0
    assert not {line.split("=", 1)[0] for line in (tmp_path / "args.env").read_text().splitlines()} & set(
        PMIX_VARIABLES
    )
    recorded = (tmp_path / "args").read_text().splitlines()
    child = [
        sys.executable,
        "-m",
        "pipeline",
        "bench",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(out),
    ]
    assert recorded == [
        "profile",
        f"--output={out}/bench",
        "--force-overwrite=true",
        "--trace=cuda,nvtx,osrt",
        *child,
        "--latency-runs",
        "2",
    ]
    assert f"profile: {out}/bench.nsys-rep" in capsys.readouterr().err
    # The child is an ordinary bench run (no --nsys, so no recursion): here it finds no engine.
    assert main(recorded[7:]) == 2
    assert "no engine of tiny-mistral" in capsys.readouterr().err
    monkeypatch.setenv("NSYS_EXIT", "5")  # the child's exit code is the command's
    assert main(args) == 5


# ---------------------------------------------------------------- spread, noise, the machine (issue 23, item 1)


def test_spread_is_the_median_with_the_extreme_runs_and_marks_wide_ones_noisy():
    s = Spread.of([105.0, 100.0, 110.0])
    assert (s.median, s.low, s.high, s.runs) == (105.0, 100.0, 110.0, 3)
    # The threshold is the policy's own number (10%); 10/105 sits under it, 11/105 over it.
    assert NOISY_RELATIVE_SPREAD == 0.10
    assert s.relative_spread == pytest.approx(10 / 105) and not s.noisy
    assert Spread.of([105.0, 100.0, 111.0]).noisy
    assert not Spread.of([42.0]).noisy  # one run has no spread to judge
    dumped = s.model_dump()
    assert dumped["noisy"] is False and Spread.model_validate(dumped) == s  # bench.json carries the mark
    with pytest.raises(ValueError):
        Spread.of([])
    # 3: spreads replaced single figures; 4: aiperf served points; 5: every backend's builds, labelled;
    # 6: served points over repeated runs; 7: figures apart from the previous bench's
    assert BENCH_REPORT_VERSION == 7


class JitteryRunner(FakeRunner):
    """Every third call of one shape (batch, prompt lengths, tokens) takes 50% longer: a machine busy a
    third of the time, seen by every figure whatever the order in which the harness interleaves shapes."""

    def cost(self, seconds: float) -> float:
        same_shape = sum(1 for call in self.calls if call == self.calls[-1])
        return seconds * (1.5 if same_shape % 3 == 0 else 1.0)


def _summary_text(report: BenchReport) -> str:
    from rich.console import Console

    from pipeline.bench.summary import summary_table

    console = Console(record=True, width=250)
    console.print(summary_table(report))
    return console.export_text()


def _report_of(variant: VariantResult, machine: MachineState | None = None) -> BenchReport:
    return BenchReport(
        created_at=datetime(2026, 12, 3, tzinfo=timezone.utc),
        model="tiny-mistral",
        target="cpu",
        plan_applies=False,
        host={},
        machine=machine or _machine(),
        settings=BenchSettings(),
        variants=(variant,),
        published=published_estimate(pretrained_config={"vocab_size": 512}, target="cpu"),
    )


def test_a_noisy_figure_is_marked_in_bench_md_and_the_summary(tmp_path):
    quiet = _variant("int8_wo", "latency", _plan())
    noisy = _variant("int8_wo", "latency", _plan(), JitteryRunner, latency_runs=3, throughput_runs=3)
    assert noisy.latency.decode_tokens_per_s.noisy and all(
        p.output_tokens_per_s.noisy for p in noisy.throughput
    )
    md = write_bench_report(_report_of(noisy), tmp_path)["markdown"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| trtllm-engine/int8_wo/latency | ")]
    ranges = [m for row in rows for m in re.findall(r"\(\d+\.\d+-\d+\.\d+(, noisy)?\)", row)]
    # latency: TTFT and decode; throughput: tokens/s, TTFT and step at batches 1, 2, 4; the
    # recommendation's best point; formats: decode and best
    assert len(ranges) == 2 + 3 * 3 + 1 + 2 and all(ranges)
    assert "more than 10% of the median" in md  # the threshold, stated where the mark is read
    assert ", noisy)" in _summary_text(_report_of(noisy))
    # The quiet engine's figures carry their range and no mark.
    assert "noisy)" not in _summary_text(_report_of(quiet))


def test_batch_1_figures_have_one_name_each(tmp_path):
    """Decode speed (batch 1, after the first token) never stands in for an output-tokens/s figure."""
    one = _variant("int8_wo", "latency", _plan(), batch_sizes=(1,))
    decode, output = one.latency.decode_tokens_per_s.median, one.throughput[0].output_tokens_per_s.median
    assert decode > output  # the fake runner's prefill makes the whole call slower per token
    summary = _summary_text(_report_of(one))
    assert "decode tok/s (b1)" in summary and "best output tok/s" in summary
    assert f"{output:.1f} ({output:.1f}-{output:.1f}) at batch 1" in summary
    assert f"{decode:.1f} at batch 1" not in summary
    md = write_bench_report(_report_of(one), tmp_path)["markdown"].read_text()
    assert "batch-1 tok" not in md and "decode tokens/s (batch 1)" in md and "best output tokens/s" in md


# ---------------------------------------------------------------- against the previous bench (issue 23)


class SlowerRunner(FakeRunner):
    """The fake runner on a machine 30% slower: every cost times 1.3."""

    def cost(self, seconds: float) -> float:
        return seconds * 1.3


def _figures(report: BenchReport) -> dict[str, Spread]:
    """Every spread of every variant by a name that says where it stands."""
    out: dict[str, Spread] = {}
    for v in report.variants:
        points = [("latency", v.latency), *((f"batch {p.batch_size}", p) for p in v.throughput)]
        points += [(f"clients {p.concurrency}", p) for p in v.served]
        for where, point in points:
            for name in type(point).model_fields:
                value = getattr(point, name)
                if isinstance(value, Spread):
                    out[f"{v.label} {where} {name}"] = value
                elif isinstance(value, RunPercentiles):
                    out |= {f"{v.label} {where} {name} {q}": getattr(value, q) for q in ("p50_ms", "p99_ms")}
    return out


def test_a_figure_apart_from_the_previous_bench_is_marked_noisy_with_its_old_median(tmp_path):
    from pipeline.bench.drift import against_previous

    served = {"served": (_served(2, 100.0, itl_p99=30.0, ttft_p99=200.0),)}
    before = _report_of(_variant("int8_wo", "latency", _plan()).model_copy(update=served))
    # The same engine bytes on a machine 30% slower: the fake runners' runs cost the same every time,
    # so each range is one point and every in-process figure lies apart; served: 50% slower.
    slower = _variant("int8_wo", "latency", _plan(), SlowerRunner).model_copy(
        update={"served": (_served(2, 66.0, itl_p99=45.0, ttft_p99=300.0),)}
    )
    marked = against_previous(_report_of(slower), before)

    old, new = _figures(before), _figures(marked)
    # latency: TTFT, decode; batches 1, 2, 4: tokens/s, TTFT, step; served: tokens/s, requests/s and
    # the p50 and p99 of TTFT and inter-token latency
    assert len(new) == 2 + 3 * 3 + 2 + 4
    assert marked.previous is not None and marked.previous.created_at == before.created_at
    assert (marked.previous.figures_compared, marked.previous.figures_apart) == (len(new), len(new))
    assert marked.previous.largest_shift == pytest.approx(0.5)  # served ITL p99 30 -> 45 ms
    for name, figure in new.items():
        assert figure.noisy and figure.apart_from == old[name], name
    # Figures do not move: only the marks are new.
    assert all(
        figure.model_copy(update={"apart_from": None}) == _figures(_report_of(slower))[n]
        for n, figure in new.items()
    )

    md = write_bench_report(marked, tmp_path)["markdown"].read_text()
    decode_before = before.variants[0].latency.decode_tokens_per_s.median
    assert f", noisy, was {decode_before:.1f})" in md
    assert (
        f"{len(new)} of {len(new)} figures of the same engines and shapes lie apart from it, by up to 50%"
        in md
    )
    assert f", was {decode_before:.1f})" in _summary_text(marked)

    # Ranges that overlap carry no mark, and a report set beside itself moves nothing.
    same = against_previous(before, before)
    assert same.variants == before.variants
    assert same.previous is not None and same.previous.figures_apart == 0
    assert f"0 of {len(new)} figures" in write_bench_report(same, tmp_path)["markdown"].read_text()


def test_only_the_same_engine_shape_and_host_are_set_beside_the_previous_bench():
    from pipeline.bench.drift import against_previous

    before = _report_of(_variant("int8_wo", "latency", _plan()))
    slower = _variant("int8_wo", "latency", _plan(), SlowerRunner)
    # Another build (the store names builds by their content): nothing to compare.
    rebuilt = against_previous(_report_of(slower.model_copy(update={"engine_dir": "/other"})), before)
    assert rebuilt.previous is not None and rebuilt.previous.figures_compared == 0
    assert not any(f.noisy for f in _figures(rebuilt).values())
    # Another output length: batch 1 and batch 4 figures are of another workload.
    longer = _variant("int8_wo", "latency", _plan(), SlowerRunner, output_len=6, batch_sizes=(1, 4))
    shape = against_previous(_report_of(longer), before)
    assert shape.previous is not None and shape.previous.figures_compared == 0
    # Another host (here another thread count): said why, and nothing marked.
    elsewhere = _report_of(slower).model_copy(update={"host": {"torch_threads": "2"}})
    moved = against_previous(elsewhere, before)
    assert (
        moved.previous is not None
        and moved.previous.not_compared == "it ran on another host, runtime or thread count"
    )
    assert moved.variants == elsewhere.variants


def test_the_bench_command_says_how_the_figures_compare_with_the_previous_bench(
    tmp_path, in_repo_root, monkeypatch, capsys
):
    import pipeline.commands.bench as command
    from pipeline.bench.drift import against_previous
    from pipeline.cli import main

    before = _report_of(_variant("int8_wo", "latency", _plan()))
    marked = against_previous(_report_of(_variant("int8_wo", "latency", _plan(), SlowerRunner)), before)
    paths = write_bench_report(marked, tmp_path / "out")
    monkeypatch.setattr(command, "bench", lambda *args, **kwargs: (marked, paths))
    assert main(["bench", "--work-dir", str(tmp_path / "work")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "11 of 11 figures of the same engines and shapes lie apart from it, by up to 30%" in out


def test_an_unreadable_or_older_previous_report_is_one_line_and_not_compared(tmp_path):
    from pipeline.bench.files import read_previous

    reporter = RecordingReporter()
    assert read_previous(tmp_path, reporter) is None and reporter.text() == ""
    (tmp_path / "bench.json").write_text('{"report_version": 6, "variants": []}')
    assert read_previous(tmp_path, reporter) is None
    assert "report_version 6, this bench writes 7: its figures are not compared" in reporter.text()
    (tmp_path / "bench.json").write_text('{"report_version": 7, "vari')
    assert read_previous(tmp_path, reporter) is None
    assert "bench.json: unreadable (" in reporter.text()
    report = _report_of(_variant("int8_wo", "latency", _plan()))
    write_bench_report(report, tmp_path)
    assert read_previous(tmp_path, reporter) == report


def test_machine_snapshot_reads_load_cpu_and_gpu_clocks(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\ncpu MHz\t\t: 1000.0\n\n"
        "processor\t: 1\nmodel name\t: Test CPU @ 2.0GHz\ncpu MHz\t\t: 3000.0\n"
    )
    s = snapshot(lambda: (), cpuinfo=cpuinfo, loadavg=lambda: (1.5, 1.0, 0.5))
    assert (s.load_1_5_15, s.cpu_mhz, s.gpu_clocks) == ((1.5, 1.0, 0.5), 2000.0, ())
    missing = snapshot(lambda: (), cpuinfo=tmp_path / "absent", loadavg=lambda: None)
    assert (missing.load_1_5_15, missing.cpu_mhz) == (None, None)

    class Nvml:
        NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

        class NVMLError(Exception):
            pass

        def nvmlInit(self):
            pass

        def nvmlDeviceGetCount(self):
            return 1

        def nvmlDeviceGetHandleByIndex(self, index):
            return f"h{index}"

        def nvmlDeviceGetName(self, handle):
            return b"NVIDIA A100-SXM4-40GB"

        def nvmlDeviceGetClockInfo(self, handle, kind):
            return {1: 1410, 2: 1215}[kind]

        def nvmlDeviceGetMaxClockInfo(self, handle, kind):
            raise self.NVMLError("not supported")

    (gpu,) = nvml_gpu_clocks(Nvml())
    assert (gpu.name, gpu.sm_mhz, gpu.memory_mhz, gpu.sm_max_mhz) == (
        "NVIDIA A100-SXM4-40GB",
        1410,
        1215,
        None,
    )

    class NoDriver(Nvml):
        def nvmlInit(self):
            raise self.NVMLError("driver not loaded")

    assert nvml_gpu_clocks(NoDriver()) == ()


def test_the_report_states_the_machine_and_a_busy_one_loudly(tmp_path):
    v = _variant("int8_wo", "latency", _plan())
    quiet = write_bench_report(_report_of(v), tmp_path / "quiet")["markdown"].read_text()
    assert "Machine: 2 CPUs (Test CPU)." in quiet
    assert "Before: load 0.50 / 0.40 / 0.30, CPU 2000 MHz." in quiet and "Busy machine" not in quiet
    busy = _report_of(v, _machine(load_before=2.0))
    assert busy.machine.busy_before
    md = write_bench_report(busy, tmp_path / "busy")["markdown"].read_text()
    assert "**Busy machine**: the 1-minute load before the bench (2.00) was at least the CPU count (2)" in md
    assert "BUSY MACHINE" in _summary_text(busy) and "BUSY" not in _summary_text(_report_of(v))
    data = json.loads((tmp_path / "busy" / "bench.json").read_text())
    assert data["machine"]["busy_before"] is True and data["machine"]["before"]["load_1_5_15"][0] == 2.0


def test_bench_options_reach_the_settings(tmp_path, in_repo_root, monkeypatch):
    """Each bench option lands in BenchSettings; the defaults are BenchSettings' own."""
    import pipeline.commands.bench as command
    from pipeline.cli import main

    seen: list[BenchSettings] = []

    def capture(config, work_dir, settings, **kwargs):
        seen.append(settings)
        raise InputError("captured")

    monkeypatch.setattr(command, "bench", capture)
    assert main(["bench", "--work-dir", str(tmp_path)]) == 2
    assert main(["bench", "--work-dir", str(tmp_path), "--throughput-runs", "7", "--latency-runs", "4"]) == 2
    assert (
        main(["bench", "--work-dir", str(tmp_path), "--itl-budget-ms", "20", "--ttft-budget-ms", "250.5"])
        == 2
    )
    default, runs, budget = seen
    assert default == BenchSettings() and (default.itl_budget_ms, default.ttft_budget_ms) == (50.0, 500.0)
    assert (runs.throughput_runs, runs.latency_runs) == (7, 4)
    assert (budget.itl_budget_ms, budget.ttft_budget_ms) == (20.0, 250.5)


# ---------------------------------------------------------------- the sweet spot (issue 23, item 3)


def _served(concurrency: int, rate: float, itl_p99: float, ttft_p99: float) -> ServedPoint:
    """Three aiperf runs at `rate` tokens/s (median), the slowest of them at the p99s given."""
    factors = (0.9, 1.0, 0.95)

    def runs(p99: float, count: int) -> RunPercentiles:
        return RunPercentiles.of(
            [Percentiles(p50_ms=p99 * f / 2, p90_ms=p99 * f, p99_ms=p99 * f, count=count) for f in factors]
        )

    return ServedPoint(
        concurrency=concurrency,
        runs=len(factors),
        requests=4 * concurrency,
        input_len=32,
        output_len=8,
        output_tokens=32 * concurrency,
        wall_s=1.0,
        output_tokens_per_s=Spread.of([rate * 0.98, rate, rate * 1.01]),
        ttft=runs(ttft_p99, 4),
        itl=runs(itl_p99, 28),
        requests_per_s=Spread.of([rate / 8]),
        measured_by="aiperf 0.13.0",
        endpoint="http://127.0.0.1:9/v2/models/ensemble/generate_stream",
        source="test",
    )


def test_operating_points_hold_batches_to_their_slowest_run_and_served_to_p99():
    from pipeline.bench.sweetspot import operating_points

    v = _variant("int8_wo", "latency", _plan(), JitteryRunner, latency_runs=3, throughput_runs=3)
    v = v.model_copy(update={"served": (_served(2, 90.0, itl_p99=30.0, ttft_p99=200.0),)})
    points = operating_points(v)
    assert [p.at for p in points] == ["batch 1", "batch 2", "batch 4", "clients 2"]
    four = points[2]
    step, prefill = v.throughput[2].step_ms, v.throughput[2].ttft_ms
    assert (four.itl_ms, four.ttft_ms, four.itl_p50_ms) == (step.high, prefill.high, step.median)
    assert step.high > step.median and four.measured_by == v.throughput[2].measured_by
    served = points[3]
    assert (served.itl_ms, served.ttft_ms) == (30.0, 200.0)  # the slowest run's p99s
    assert (served.itl_p50_ms, served.ttft_p50_ms) == (30.0 * 0.95 / 2, 200.0 * 0.95 / 2)  # the median run's
    assert served.tokens_per_s == v.served[0].output_tokens_per_s and served.tokens_per_s.runs == 3
    assert served.measured_by == "aiperf 0.13.0 (streamed requests to the server)"
    assert served.within(30.0, 200.0) and not served.within(29.9, 200.0) and not served.within(30.0, 199.9)


def _long_plan(largest: int) -> PlanFigures:
    return _plan().model_copy(update={"largest_batch_at_max_seq_len": largest})


def test_the_recommendation_is_the_most_tokens_within_the_budget(tmp_path):
    from pipeline.bench.sweetspot import recommend

    fast = _variant("int8_sq", "throughput", _long_plan(8)).model_copy(
        update={"served": (_served(8, 5000.0, itl_p99=80.0, ttft_p99=100.0),)}  # fastest, over the ITL budget
    )
    slow = _variant("int8_wo", "throughput", _long_plan(12))
    report = _report_of(fast).model_copy(update={"variants": (fast, slow)})
    r = recommend(report)
    # The fake runner's points all sit far inside 50 ms / 500 ms; the served one does not.
    best_in_process = max(
        (p for v in (fast, slow) for p in v.throughput), key=lambda p: p.output_tokens_per_s.median
    )
    assert r.best is not None and r.best.load_kind == "batch"
    assert r.best.tokens_per_s == best_in_process.output_tokens_per_s and r.fastest_outside is None
    assert dict(r.per_variant)["trtllm-engine/int8_sq/throughput"].load_kind == "batch"
    # Every variant here has the same max_seq_len (48): the plan's largest batch decides.
    assert r.long_context.variants == ("trtllm-engine/int8_wo/throughput",) and r.long_context.sequences == 12
    md = write_bench_report(report, tmp_path)["markdown"].read_text()
    lines = md.splitlines()
    assert lines[2] == "## Recommendation"  # bench.md opens with it, under its title
    assert "Latency budget: inter-token <= 50 ms and TTFT <= 500 ms" in md
    assert f"| most output tokens/s within the budget | {r.best.variant} at {r.best.at} |" in md
    assert (
        "| most sequences at the long-context profile (throughput, max_seq_len 48) | trtllm-engine/int8_wo/throughput |"
        in md
    )
    assert "![latency against throughput](pareto.png)" in md

    # A budget nothing meets: no pick, and the fastest point says what it would need.
    tight = report.model_copy(update={"settings": BenchSettings(itl_budget_ms=0.001, ttft_budget_ms=0.001)})
    r = recommend(tight)
    assert r.best is None and all(p is None for _, p in r.per_variant)
    assert r.fastest_outside is not None and r.fastest_outside.at == "clients 8"
    md = write_bench_report(tight, tmp_path / "tight")["markdown"].read_text()
    assert (
        "| none: no point meets the budget | the fastest, trtllm-engine/int8_sq/throughput at clients 8, needs:"
        in md
    )
    assert "| trtllm-engine/int8_wo/throughput | none within the budget |" in md


def test_variants_the_runs_cannot_rank_below_the_answer_are_named_beside_it(tmp_path):
    from pipeline.bench.sweetspot import recommend

    sq = _variant("int8_sq", "throughput", _plan())
    wo = _variant("int8_wo", "throughput", _plan())  # the same fake costs: the same figures, overlapping
    slower = _variant("fp16", "throughput", _plan(), SlowerRunner)  # 30% slower in every run: apart
    report = _report_of(sq).model_copy(update={"variants": (sq, wo, slower)})
    r = recommend(report)
    assert r.best is not None and (r.best.variant, r.best.at) == (
        "trtllm-engine/int8_sq/throughput",
        "batch 4",
    )
    assert [(p.variant, p.at) for p in r.level_with] == [("trtllm-engine/int8_wo/throughput", "batch 4")]
    md = write_bench_report(report, tmp_path)["markdown"].read_text()
    rate = spread_text(wo.throughput[-1].output_tokens_per_s)
    assert (
        "As fast for all these runs can tell (their runs overlap the answer's): "
        f"trtllm-engine/int8_wo/throughput at batch 4, {rate} tokens/s. Choose between them"
    ) in md
    assert "fp16/throughput at batch" not in md.split("Each variant's best operating point")[0]
    assert "The answer's own figure is marked noisy" not in md

    # Alone, nothing is level with it; and a noisy answer says its lead is not settled.
    jittery = _variant("int8_sq", "throughput", _plan(), JitteryRunner, throughput_runs=3)
    alone = _report_of(jittery)
    assert recommend(alone).level_with == ()
    md = write_bench_report(alone, tmp_path / "alone")["markdown"].read_text()
    assert "As fast for all these runs can tell" not in md
    assert "The answer's own figure is marked noisy (see below)" in md


def test_the_long_context_answer_is_the_longest_profile_and_keeps_ties():
    from pipeline.bench.sweetspot import long_context_pick

    short = _variant("int8_sq", "throughput", _long_plan(64))  # more sequences, but shorter ones
    longs = [
        _variant(p, "long", _long_plan(n)).model_copy(
            update={"limits": {"max_batch_size": 4, "max_input_len": 32, "max_seq_len": 8192}}
        )
        for p, n in (("int8_sq", 28), ("int8_wo", 28), ("fp16", 14))
    ]
    pick = long_context_pick(_report_of(short).model_copy(update={"variants": (short, *longs)}))
    assert (pick.profile, pick.max_seq_len, pick.sequences) == ("long", 8192, 28)
    assert pick.variants == ("trtllm-engine/int8_sq/long", "trtllm-engine/int8_wo/long")


def test_the_pareto_plot_is_1000_px_wide(tmp_path):
    from matplotlib.image import imread

    v = _variant("int8_wo", "throughput", _plan()).model_copy(
        update={"served": (_served(2, 90.0, itl_p99=30.0, ttft_p99=200.0),)}
    )
    paths = write_bench_report(_report_of(v), tmp_path)
    height, width, _ = imread(paths["pareto_plot"]).shape
    assert width == 1000 and 300 < height < 1000


# ---------------------------------------------------------------- plots a person reads (issue 23, item 5)


def test_the_plan_stands_beside_figures_only_where_the_backend_says_it_applies(tmp_path, in_repo_root):
    from pipeline.backends import backend_of
    from pipeline.bench.plots import ceiling_lines, plan_memory_bars
    from pipeline.facts.config import load_config

    # The backend answers: the reference runtime (CPU target) is not what the plan models; an engine is.
    assert not backend_of(load_config(None), "trtllm-engine").bench_plan_applies()
    assert backend_of(load_config(in_repo_root / "pipeline.toml"), "trtllm-engine").bench_plan_applies()
    v = _variant("int8_wo", "throughput", _plan(1e6))
    cpu = _report_of(v)
    gpu = cpu.model_copy(update={"plan_applies": True})
    assert ceiling_lines(cpu) == {} and plan_memory_bars(cpu) is None
    assert [b for b, _ in ceiling_lines(gpu)["trtllm-engine/int8_wo/throughput"]] == [1, 2, 4]
    assert plan_memory_bars(gpu) == [10.0]
    md = write_bench_report(cpu, tmp_path)["markdown"].read_text()
    (latency_row,) = [
        line
        for line in md[md.index("## Latency") :].splitlines()
        if line.startswith("| trtllm-engine/int8_wo/")
    ][:1]
    assert latency_row.endswith("| n/a | n/a |")  # no ceiling, no ratio (was 9.3e-04x on the CPU)
    assert "e-0" not in md  # no ratio against a ceiling the CPU never approaches
    assert "fit (the plan's model of cpu, not of what ran here) |" in md
    assert "fit (the plan's model" not in write_bench_report(gpu, tmp_path / "gpu")["markdown"].read_text()
    assert "n/a" in _summary_text(cpu).split("trtllm-engine/int8_wo/throughput")[1].split("\n")[0]


# ---------------------------------------------------------------- GPU utilization (issue 23, item 6)


def test_utilization_below_what_back_to_back_steps_give_is_named_and_the_cpu_says_not_measured():
    from pipeline.bench.memory import UtilizationReading
    from pipeline.bench.report import UTILIZATION_FLOOR_PERCENT, render_markdown

    v = _variant("int8_wo", "throughput", _plan())
    assert "GPU utilization is not measured" in render_markdown(_report_of(v))  # the CPU: no NVML reading

    def with_utilization(mean: float) -> str:
        reading = UtilizationReading(mean_percent=mean, max_percent=100, samples=50, source="nvml")
        memory = MemoryReading(
            measure="gpu_device_used", peak_bytes=1 << 30, source="nvml", gpu_utilization=reading
        )
        return render_markdown(_report_of(v.model_copy(update={"memory": memory})))

    low = with_utilization(UTILIZATION_FLOOR_PERCENT - 1)
    assert (
        f"**trtllm-engine/int8_wo/throughput: GPU busy {UTILIZATION_FLOOR_PERCENT - 1}% of the time (max 100%)**"
        in low
    )
    assert "over batches up to 4" in low and "bench --nsys" in low
    fed = with_utilization(UTILIZATION_FLOOR_PERCENT)
    assert "GPU busy" not in fed and f"stayed at or above {UTILIZATION_FLOOR_PERCENT}%" in fed


def test_bench_finds_every_selected_backends_builds_and_each_ones_own_gate(tmp_path: Path, in_repo_root):
    from pipeline.bench.run import find_engines

    config, store, stages = _fake_builds(tmp_path / "work", precisions={"int8_wo"}, profiles={"latency"})
    assert [b.name for b in config.backends] == ["trtllm-engine", "trtllm-pytorch"]
    found = find_engines(config, store, reporter=RecordingReporter(), stages=stages)
    assert [e.label for e in found.engines] == [
        "trtllm-engine/int8_wo/latency",
        "trtllm-pytorch/int8_wo/latency",
    ]
    assert [e.folder for e in found.engines] == [
        Path("trtllm-engine/int8_wo/latency"),
        Path("trtllm-pytorch/int8_wo/latency"),
    ]
    assert all(e.gate_dir is None for e in found.engines)
    (pytorch,) = find_engines(
        config, store, reporter=RecordingReporter(), backends={"trtllm-pytorch"}, stages=stages
    ).engines
    assert pytorch.label == "trtllm-pytorch/int8_wo/latency"


def test_no_two_tick_labels_overlap_in_any_plot(tmp_path, monkeypatch):
    """The demo's six variants, named backend/precision/profile, served and beside a peer: every axis'
    labels stay apart (the memory plot once printed them on top of each other), and every legend lies
    within its figure (the served rows once pushed the pareto and throughput legends past both edges)."""
    import math
    from itertools import combinations, pairwise

    from pipeline.bench import plots

    base = _variant("int8_wo", "throughput", _plan(1e6)).model_copy(
        update={
            "gate": _gate(("perplexity_increase_pct", 1.5, 5.0, "max"), ("top1_agreement", 0.97, 0.9, "min")),
            "served": (_served(1, 90.0, itl_p99=30.0, ttft_p99=200.0), _served(2, 150.0, 40.0, 300.0)),
        }
    )
    variants = tuple(
        base.model_copy(update={"backend": backend, "precision": precision, "profile": profile})
        for backend, precision in (
            ("trtllm-engine", "int8_sq"),
            ("trtllm-engine", "int8_wo"),
            ("trtllm-pytorch", "int8_wo"),
        )
        for profile in ("latency", "throughput")
    )
    peer = PeerResult(
        name="http://127.0.0.1:8100", model="peer", workload_of=variants[1].label, served=base.served
    )
    report = _report_of(base).model_copy(update={"variants": variants, "peers": (peer,)})
    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: figures.append(fig))
    write_bench_report(report, tmp_path)
    assert len(figures) == 4
    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for legend in fig.legends:
            box = legend.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (fig.texts, box)
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                labels = [t for t in axis.get_ticklabels() if t.get_text()]
                where = (ax.get_title(), [t.get_text() for t in labels])
                if labels and labels[0].get_rotation():
                    # Slanted labels are parallel: they stay apart when the distance between two
                    # neighbours' baselines (their spacing x sin of the slant) holds a line of text.
                    slant = math.radians(labels[0].get_rotation())
                    line = labels[0].get_fontsize() * fig.dpi / 72
                    xs = [
                        ax.transData.transform((x, 0))[0] for x in sorted(t.get_position()[0] for t in labels)
                    ]
                    assert all((b - a) * math.sin(slant) >= line for a, b in pairwise(xs)), where
                    continue
                boxes = [t.get_window_extent(renderer) for t in labels]
                assert not any(a.overlaps(b) for a, b in combinations(boxes, 2)), where
