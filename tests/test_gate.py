"""The accuracy gate: it passes good int8 checkpoints of the tiny model and FAILS broken ones.

A gate that cannot fail is worth nothing: each corruption below is a real export bug
(rope_theta dropped by a newer transformers, q/k rows mixed up by a converter, scales
off by a constant, a layer lost) and must fail with the default thresholds of
pipeline.facts.config. Candidates run on the reference runtime; the reference is the
unquantized Hugging Face model.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from numerics import U32, gamma, use_test_threads
from tiny_checkpoints import tiny_checkpoint

from pipeline.backends.reference import ReferenceRunner
from pipeline.core.reporter import RecordingReporter
from pipeline.facts.config import GateSection, Precision, _default_thresholds
from pipeline.facts.layout import GATE_JSON
from pipeline.gate import GateRecord, HuggingFaceModel, run_gate, write_reports
from pipeline.gate.metrics import (
    greedy_match,
    perplexity_increase_pct,
    token_scores,
    top1_agreement,
    window_stats,
)
from pipeline.gate.report import GateResult
from pipeline.gate.verdict import GateCheck
from pipeline.runtime import EngineLimits, ReferenceModel

use_test_threads()
REPO = Path(__file__).resolve().parent.parent
LIMITS = EngineLimits(max_batch_size=8, max_input_len=64, max_seq_len=96)


@pytest.fixture(scope="module")
def gate_settings(tmp_path_factory) -> GateSection:
    """The offline eval set in 8 windows of 64 tokens and 8 of the offline prompts: small, still telling."""
    folder = tmp_path_factory.mktemp("gate-data")
    prompts = (REPO / "calib_data" / "prompts.jsonl").read_text().splitlines()[:8]
    (folder / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    return GateSection(
        eval_dataset=REPO / "calib_data" / "offline-eval.jsonl",
        eval_samples=8,
        eval_seq_len=64,
        prompts=folder / "prompts.jsonl",
        max_new_tokens=12,
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


class MemoizedReference:
    """The Hugging Face reference, computed once per distinct input: every gate here sees the same inputs."""

    def __init__(self, model: HuggingFaceModel) -> None:
        self.model = model
        self.memo: dict[tuple, object] = {}

    def context_logits(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        key = ("logits", tuple(map(tuple, sequences)))
        if key not in self.memo:
            self.memo[key] = self.model.context_logits(sequences)
        return self.memo[key]

    def generate(self, prompts, *, max_new_tokens, end_id=None):
        key = ("generate", tuple(map(tuple, prompts)), max_new_tokens, end_id)
        if key not in self.memo:
            self.memo[key] = self.model.generate(prompts, max_new_tokens=max_new_tokens, end_id=end_id)
        return self.memo[key]


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> MemoizedReference:
    return MemoizedReference(HuggingFaceModel.load(tiny_model_dir))


def engine(checkpoint: Path, limits: EngineLimits = LIMITS) -> ReferenceRunner:
    """A checkpoint behind the runner API, as the reference backend's build packs it."""
    return ReferenceRunner(ReferenceModel.load(checkpoint, limits=limits), engine_config={})


def gate_models(
    reference,
    candidate,
    served,
    tokenizer,
    settings: GateSection,
    *,
    precision: str,
    thresholds=None,
    limits=LIMITS,
) -> GateRecord:
    """run_gate over models already loaded, both engines with the same limits."""
    return run_gate(
        reference=lambda: reference,
        candidate=lambda: candidate,
        served=lambda: served,
        tokenizer=tokenizer,
        settings=settings,
        thresholds=thresholds or _default_thresholds()[Precision(precision)],
        limits=limits,
        served_limits=limits,
        precision=precision,
        profile="test",
        reporter=RecordingReporter(),
    )


@pytest.fixture(scope="module")
def gate(reference, tokenizer, gate_settings):
    def run(checkpoint: Path, precision: str, served: Path | None = None) -> GateRecord:
        candidate, served_engine = engine(checkpoint), engine(served or checkpoint)
        return gate_models(reference, candidate, served_engine, tokenizer, gate_settings, precision=precision)

    return run


def _corrupt(source: Path, dest: Path, *, config=None, tensors=None) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    if config is not None:
        data = json.loads((dest / "config.json").read_text())
        config(data)
        (dest / "config.json").write_text(json.dumps(data))
    if tensors is not None:
        data = load_file(dest / "rank0.safetensors")
        tensors(data)
        save_file(data, dest / "rank0.safetensors")
    return dest


def drop_rotary_base(config: dict) -> None:
    del config["rotary_base"]  # TensorRT-LLM then uses 10000.0; the model was trained with 1e6


def swap_q_and_k(tensors: dict) -> None:
    """Swap the first KV-width rows of q with k in every fused qkv weight (and its scales)."""
    for name in [
        n
        for n in tensors
        if n.endswith("attention.qkv.weight") or n.endswith("attention.qkv.weights_scaling_factor")
    ]:
        t = tensors[name].clone()
        # tiny model: q 2 heads x 64, k and v 1 head each: q is half the rows, k a quarter (packed or not)
        q_rows, kv_rows = t.shape[0] // 2, t.shape[0] // 4
        t[:kv_rows], t[q_rows : q_rows + kv_rows] = (
            tensors[name][q_rows : q_rows + kv_rows],
            tensors[name][:kv_rows],
        )
        tensors[name] = t


def swap_int4_nibbles(tensors: dict) -> None:
    """Read each packed int4 byte the wrong way round (output rows 2j and 2j+1 exchanged)."""
    for name in [n for n in tensors if n.endswith(".weight") and tensors[n].dtype == torch.int8]:
        byte = tensors[name].to(torch.int16) & 0xFF
        tensors[name] = (((byte & 0x0F) << 4) | (byte >> 4)).to(torch.uint8).view(torch.int8)


def shrink_kv_scales(tensors: dict) -> None:
    """KV scales 1000x too small: every cached key and value saturates."""
    for name in [n for n in tensors if n.endswith("cache_scaling_factor")]:
        tensors[name] = tensors[name] / 1000


def scale_by_4(tensors: dict) -> None:
    for name in [n for n in tensors if n.endswith("weights_scaling_factor")]:
        tensors[name] = tensors[name] * 4


def zero_one_layer(tensors: dict) -> None:
    for name in [n for n in tensors if n.startswith("transformer.layers.1.") and n.endswith(".weight")]:
        if "layernorm" not in name:
            tensors[name] = torch.zeros_like(tensors[name])


CORRUPTIONS = {
    "rotary base dropped": {"config": drop_rotary_base},
    "q and k swapped": {"tensors": swap_q_and_k},
    "scales x4": {"tensors": scale_by_4},
    "one layer zeroed": {"tensors": zero_one_layer},
}


@pytest.mark.parametrize(
    ("precision", "kv_cache_dtype"),
    [("int8_sq", "fp16"), ("int8_wo", "fp16"), ("int4_awq", "fp16"), ("fp8", "fp16"), ("int8_wo", "int8")],
)
def test_gate_passes_a_good_checkpoint(tmp_path_factory, tiny_model_dir, gate, precision, kv_cache_dtype):
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_model_dir, precision, kv_cache_dtype=kv_cache_dtype)
    record = gate(checkpoint, precision)
    assert record.verdict, record.summary
    assert [c.name for c in record.checks] == [
        "perplexity_increase_pct",
        "top1_agreement",
        "greedy_match",
        "served_greedy_match",
    ]
    assert record.windows == 8 and record.window_len == 64 and record.prompts == 8
    # the same checkpoint, served with the same limits and batches: the same computation, bit for bit
    assert record.served_exact_greedy_matches == 8 and record.served_near_ties == 0


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_gate_fails_a_corrupted_int8_sq_checkpoint(
    tmp_path: Path, tmp_path_factory, tiny_model_dir, gate, corruption
):
    good = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq")
    record = gate(_corrupt(good, tmp_path / "bad", **CORRUPTIONS[corruption]), "int8_sq")
    assert not record.verdict
    # Each breaks the model outright: perplexity sees it, not one check by luck; all but the rotary base
    # (the 128-wide tiny model still agrees on the top token at most positions without it) break top-1 too.
    failed = {c.name for c in record.failed}
    assert "perplexity_increase_pct" in failed
    assert corruption == "rotary base dropped" or "top1_agreement" in failed


@pytest.mark.parametrize("corruption", ["rotary base dropped", "q and k swapped"])
def test_gate_fails_a_corrupted_int8_wo_checkpoint(
    tmp_path: Path, tmp_path_factory, tiny_model_dir, gate, corruption
):
    good = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo")
    record = gate(_corrupt(good, tmp_path / "bad", **CORRUPTIONS[corruption]), "int8_wo")
    assert not record.verdict


# Each new format, broken where it can break: the gate must fail it with its own default thresholds.
NEW_FORMAT_CORRUPTIONS = {
    ("int4_awq", "fp16", "int4 nibbles swapped"): {"tensors": swap_int4_nibbles},
    ("int4_awq", "fp16", "q and k swapped"): CORRUPTIONS["q and k swapped"],
    ("fp8", "fp16", "scales x4"): CORRUPTIONS["scales x4"],
    ("fp8", "fp16", "rotary base dropped"): CORRUPTIONS["rotary base dropped"],
    ("int8_wo", "int8", "KV scales 1000x too small"): {"tensors": shrink_kv_scales},
}


@pytest.mark.parametrize("case", NEW_FORMAT_CORRUPTIONS, ids=lambda c: f"{c[0]}-kv{c[1]}-{c[2]}")
def test_gate_fails_a_broken_checkpoint_of_each_new_format(
    tmp_path: Path, tmp_path_factory, tiny_model_dir, gate, case
):
    precision, kv_cache_dtype, _ = case
    good = tiny_checkpoint(tmp_path_factory, tiny_model_dir, precision, kv_cache_dtype=kv_cache_dtype)
    record = gate(_corrupt(good, tmp_path / "bad", **NEW_FORMAT_CORRUPTIONS[case]), precision)
    assert not record.verdict, record.summary


def test_gate_fails_a_served_engine_that_disagrees_with_the_gate_engine(
    tmp_path: Path, tmp_path_factory, tiny_model_dir, gate
):
    """Served engines carry no context logits: the gate engine is scored, and each served engine must
    continue the prompts as it does. A served engine that went wrong fails only that check."""
    good = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq")
    bad = _corrupt(good, tmp_path / "bad", **CORRUPTIONS["q and k swapped"])
    record = gate(good, "int8_sq", served=bad)
    assert not record.verdict
    assert [c.name for c in record.failed] == ["served_greedy_match"]
    assert record.served_exact_greedy_matches < record.prompts


class Counting:
    """A model that records how many sequences each call carries."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls: list[int] = []
        self.generated: list[int] = []

    def context_logits(self, sequences):
        self.calls.append(len(sequences))
        return self.model.context_logits(sequences)

    def generate(self, prompts, **options):
        self.generated.append(len(prompts))
        return self.model.generate(prompts, **options)


def test_gate_scores_in_its_own_small_batch_whatever_the_engines_allow(
    tmp_path_factory, tiny_model_dir, reference, tokenizer, gate_settings
):
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo")
    wide = EngineLimits(max_batch_size=64, max_input_len=64, max_seq_len=96)  # a throughput engine
    models = {role: Counting(engine(checkpoint, wide)) for role in ("candidate", "served")}
    counted_reference = Counting(reference)
    settings = gate_settings.model_copy(update={"batch_size": 3})
    record = gate_models(
        counted_reference,
        models["candidate"],
        models["served"],
        tokenizer,
        settings,
        precision="int8_wo",
        limits=wide,
    )
    assert record.batch_size == 3
    for model in (counted_reference, models["candidate"]):
        assert model.calls and max(model.calls) == 3
    # Prompts are continued one at a time by every model: batch 1 is the shape the gate engine and a
    # served engine of any profile share (issue 21, item 4); the served engine is only asked for them.
    for model in (counted_reference, *models.values()):
        assert model.generated and set(model.generated) == {1}
    assert not models["served"].calls


def test_token_scores_widen_a_slice_at_a_time_and_match_a_whole_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(50, 33).half()  # an engine's FP16 logits
    ids = torch.randint(0, 33, (50,)).tolist()
    widened: list[int] = []

    class Spy(torch.Tensor):
        def float(self):
            widened.append(self.shape[0])
            return super().float()

    scores = token_scores(logits.as_subclass(Spy), ids, chunk=16)
    assert widened == [16, 16, 16, 1]  # 49 scored positions, never more than one slice in float32
    whole = torch.log_softmax(logits[:-1].float(), dim=-1)
    expected = -whole.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    # Two fp32 log-sum-exps over the V = 33 logits (logsumexp minus the pick, and log_softmax). In each,
    # a term's shift by the max (one rounding of d = x - max, which exp turns into a relative d u, and
    # e^d |d| <= 1/e < 1), its exponential (within 2 roundings) and the V - 1 additions move the sum by
    # at most 2V + 2 roundings relative, the log and the add-back by 2 more relative to 1 + |lse|; the
    # subtraction of the pick adds one of |nll| on each side.
    vocab = logits.shape[-1]
    lse = torch.logsumexp(logits[:-1].float(), dim=-1)
    bound = 2 * gamma(2 * vocab + 4) * (1 + lse.abs()) + 2 * U32 * expected.abs()
    assert ((scores.nll - expected).abs() <= bound).all()
    assert torch.equal(scores.top1, whole.argmax(-1))


def test_token_scores_refuse_logits_that_do_not_match_their_sequence():
    from pipeline.core.errors import StageError

    with pytest.raises(StageError, match=r"logits of shape \(4, 8\) for a 5-token sequence"):
        token_scores(torch.zeros(4, 8), [1, 2, 3, 4, 5])


# --- the measures, the verdict and the reports (pure) ------------------------------------------------


def test_perplexity_and_top1_from_logits():
    logits = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]]) + 1e-30)
    stats = window_stats([token_scores(logits, [0, 1, 2])])
    assert stats.tokens == 2
    # exp(mean NLL) of p=0.5, p=0.5: each NLL is log 2 to within the fp32 roundings of its logs, exps and
    # sums (under 16 of magnitude <= 1), which exp() carries over as a relative error.
    assert stats.perplexity == pytest.approx((1 / (0.5 * 0.5)) ** 0.5, rel=gamma(16))
    assert stats.top1.tolist() == [[0, 2]]
    # SmoothQuant on Mistral-7B, quoted to three decimals: half a unit of the last one apart at most.
    assert perplexity_increase_pct(5.253, 5.277) == pytest.approx(0.457, abs=0.0005)
    assert top1_agreement(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75


def test_greedy_match_weighs_where_continuations_diverge():
    assert greedy_match([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert greedy_match([[1, 2, 3, 4]], [[1, 2, 9, 9]]) == 0.5
    assert greedy_match([[1, 2, 3, 4]], [[9, 2, 3, 4]]) == 0.0
    assert greedy_match([[1, 2]], [[1, 2, 3, 4]]) == 0.5  # stopping early is a divergence too
    assert greedy_match([[], [5]], [[], [5]]) == 1.0


def _record(**changes) -> GateRecord:
    checks = [
        GateCheck(name="perplexity_increase_pct", value=0.4, threshold=3.0, direction="max", passed=True),
        GateCheck(name="top1_agreement", value=0.85, threshold=0.9, direction="min", passed=False),
    ]
    fields = dict(
        verdict=False,
        precision="int8_sq",
        profile="latency",
        checks=checks,
        reference_perplexity=5.253,
        candidate_perplexity=5.274,
        exact_greedy_matches=3,
        served_exact_greedy_matches=8,
        served_near_ties=0,
        reference_choice_accuracy=None,
        candidate_choice_accuracy=None,
        windows=8,
        window_len=64,
        prompts=8,
        max_new_tokens=12,
        choice_items=0,
        batch_size=8,
        data={"eval.jsonl": "ab" * 32},
        reference_s=1.0,
        candidate_s=2.0,
        served_s=0.5,
    )
    return GateRecord(**{**fields, **changes})


def test_reports_name_each_failed_check(tmp_path: Path):
    record = _record()
    write_reports(tmp_path, record)
    assert GateResult.model_validate_json((tmp_path / "gate.json").read_text()) == record.result
    # What the machine spent stays out of the files: a gate that judges alike writes the same bytes.
    assert "reference_s" not in (tmp_path / "gate.json").read_text()
    again = tmp_path / "again"
    again.mkdir()
    write_reports(again, _record(reference_s=9.0, candidate_s=8.0, served_s=7.0))
    assert all(
        (again / name).read_bytes() == (tmp_path / name).read_bytes() for name in (GATE_JSON, "junit.xml")
    )
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["top1_agreement"]
    markdown = (tmp_path / "gate.md").read_text()
    assert "FAILED" in markdown.splitlines()[0]
    assert "| top1_agreement | 0.8500 | >= 0.9 | **FAIL** |" in markdown
    assert record.summary == "FAILED top1_agreement 0.85 (needs >= 0.9)"


def test_checks_compare_each_measure_in_its_direction():
    from pipeline.facts.config import GateThresholds
    from pipeline.gate.evaluate import Measures
    from pipeline.gate.verdict import checks_for

    thresholds = GateThresholds(
        max_perplexity_increase_pct=3.0,
        min_top1_agreement=0.9,
        min_greedy_match=0.5,
        min_multiple_choice_accuracy=0.6,
    )
    measures = Measures(
        reference_perplexity=5.0,
        candidate_perplexity=5.15,
        perplexity_increase_pct=3.0,
        top1_agreement=0.89,
        greedy_match=0.5,
        exact_greedy_matches=1,
        reference_choice_accuracy=0.8,
        candidate_choice_accuracy=0.59,
        served_greedy_match=0.85,
        served_exact_greedy_matches=6,
        served_near_ties=0,
    )
    checks = {c.name: c.passed for c in checks_for(measures, thresholds, min_served_greedy_match=0.9)}
    assert checks == {
        "perplexity_increase_pct": True,  # at the limit passes
        "top1_agreement": False,
        "greedy_match": True,
        "served_greedy_match": False,
        "multiple_choice_accuracy": False,
    }
    no_choices = measures.__class__(**{**measures.__dict__, "candidate_choice_accuracy": None})
    names = {c.name for c in checks_for(no_choices, thresholds, min_served_greedy_match=0.9)}
    assert "multiple_choice_accuracy" not in names


def test_multiple_choice_accuracy_is_measured_and_judged(
    tmp_path: Path, tmp_path_factory, tiny_model_dir, reference, tokenizer, gate_settings
):

    items = [
        {
            "context": "The engineer measured the bridge",
            "choices": ["with great care.", "Der Zug fährt"],
            "answer": 0,
        },
        {"context": "def add(a, b):\n    return", "choices": ["a + b", "the winter harvest"], "answer": 0},
        {
            "context": "Le chat dort sur la",
            "choices": ["chaise pendant que la pluie tombe.", "print(i * i)"],
            "answer": 0,
        },
    ]
    path = tmp_path / "choices.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    thresholds = _default_thresholds()[Precision.int8_wo].model_copy(
        update={"min_multiple_choice_accuracy": 0.99}
    )
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo")
    settings = gate_settings.model_copy(update={"multiple_choice": path})
    record = gate_models(
        reference,
        engine(checkpoint),
        engine(checkpoint),
        tokenizer,
        settings,
        precision="int8_wo",
        thresholds=thresholds,
    )
    assert record.choice_items == 3
    assert record.reference_choice_accuracy == 1.0
    check = next(c for c in record.checks if c.name == "multiple_choice_accuracy")
    assert check.value == record.candidate_choice_accuracy
    assert check.passed == (check.value >= thresholds.min_multiple_choice_accuracy)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"context": "a", "choices": ["b"], "answer": 0}', "at least two choices"),
        ('{"context": "a", "choices": ["b", "c"], "answer": 2}', "answer must index"),
        ('{"question": "a"}', "line 1: not a {context, choices, answer} record"),
    ],
)
def test_bad_multiple_choice_records_are_refused_with_their_line(
    tmp_path: Path, tokenizer, gate_settings, line, message
):
    from pipeline.core.errors import InputError
    from pipeline.gate.data import prepare_inputs

    path = tmp_path / "choices.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InputError, match=message):
        prepare_inputs(gate_settings.model_copy(update={"multiple_choice": path}), tokenizer, LIMITS)


def test_windows_and_prompts_fit_the_engine_limits(tokenizer, gate_settings):
    from pipeline.gate.data import prepare_inputs

    small = EngineLimits(max_batch_size=2, max_input_len=16, max_seq_len=20)
    inputs = prepare_inputs(gate_settings, tokenizer, small)
    assert {len(w) for w in inputs.windows} == {16}  # eval_seq_len 64 cut to max_input_len
    assert max(len(p) for p in inputs.prompts) <= 16
    assert inputs.max_new_tokens == 20 - max(len(p) for p in inputs.prompts)


def test_more_windows_than_the_eval_set_holds_are_cut_and_the_cut_is_said(tokenizer, gate_settings):
    from pipeline.gate.data import prepare_inputs

    asked = gate_settings.model_copy(update={"eval_samples": 10_000_000_000})
    inputs = prepare_inputs(asked, tokenizer, LIMITS)
    held = prepare_inputs(
        gate_settings.model_copy(update={"eval_samples": len(inputs.windows)}), tokenizer, LIMITS
    )
    assert inputs.windows == held.windows and held.cut == ""  # every window the set holds, once
    assert inputs.cut.startswith("gate.eval_samples is 10000000000; ")
    assert inputs.cut.endswith(
        f"{len(inputs.windows)} window(s) of 64: the gate scores those {len(inputs.windows)}"
    )


# --- the stage, through the CLI: fetch (local) -> calibrate -> build (reference) -> gate ------------


def _pipeline_config(path: Path, model_dir: Path, prompts: Path, thresholds: str = "") -> Path:
    path.write_text(
        f"""
[model]
name = "tiny"
source = "local"
local_path = "{model_dir}"

[target]
gpu = "cpu"

[quantization]
precisions = ["int8_sq"]

[calibration]
dataset = "{REPO / "calib_data" / "offline-mix.jsonl"}"
samples = 16
seq_len = 64

[[profiles]]
name = "small"
max_batch_size = 8
max_input_len = 64
max_seq_len = 96

[gate]
eval_dataset = "{REPO / "calib_data" / "offline-eval.jsonl"}"
eval_samples = 4
eval_seq_len = 64
prompts = "{prompts}"
max_new_tokens = 8
{thresholds}
"""
    )
    return path


def test_gate_stage_writes_its_reports_and_a_failed_verdict_exits_1(
    tmp_path: Path, tiny_model_dir, gate_settings
):
    from pipeline.cli import main
    from pipeline.core.manifest import Manifest

    work = tmp_path / "work"
    passing = _pipeline_config(tmp_path / "pass.toml", tiny_model_dir, gate_settings.prompts)
    assert main(["gate", "--config", str(passing), "--work-dir", str(work)]) == 0
    (artifact,) = (work / "store" / "gate" / "trtllm-engine" / "int8_sq" / "small").glob("*/manifest.json")
    manifest = Manifest.model_validate_json(artifact.read_text())
    assert manifest.ok and manifest.record["verdict"] is True
    assert {"gate.json", "gate.md", "junit.xml"} <= {f.path for f in manifest.files}
    # Each model is one GPU step, released before the next loads (tests/test_gpu_memory.py).
    assert [m["step"] for m in manifest.record["gpu_memory"]] == [
        "gate: reference",
        "gate: gate engine",
        "gate: served engine",
    ]
    # The gate engine is built per precision for the gate and never linked for serving.
    (gate_engine,) = (work / "store" / "gate_engine" / "trtllm-engine" / "int8_sq" / "gate").glob(
        "*/manifest.json"
    )
    record = Manifest.model_validate_json(gate_engine.read_text()).record
    assert record["plan"]["gather_context_logits"]
    engines = tmp_path / "engines" / "tiny" / "trtllm-engine" / "int8_sq" / "cpu"
    assert [p.name for p in engines.iterdir()] == ["small"] and (engines / "small").is_symlink()
    assert (engines / "small").resolve().parent == (
        work / "store" / "build" / "trtllm-engine" / "int8_sq" / "small"
    ).resolve()

    # Thresholds no int8 model can meet: the stage runs, records the failure, and the CLI exits 1.
    strict = "[gate.thresholds.int8_sq]\nmax_perplexity_increase_pct = 0.0\nmin_top1_agreement = 1.0\nmin_greedy_match = 1.0"
    failing = _pipeline_config(tmp_path / "fail.toml", tiny_model_dir, gate_settings.prompts, strict)
    assert main(["gate", "--config", str(failing), "--work-dir", str(work)]) == 1
    manifests = [
        Manifest.model_validate_json(p.read_text()) for p in (work / "store" / "gate").rglob("manifest.json")
    ]
    rejected = [m for m in manifests if not m.ok]
    assert len(rejected) == 1 and rejected[0].record["verdict"] is False
    assert "FAILED" in rejected[0].summary


# ---------------------------------------------------------------- served vs gate at a near tie (issue 21, item 4)


def test_fp16_step_is_the_distance_to_the_next_fp16_number():
    from pipeline.gate.metrics import fp16_step

    values = torch.tensor([0.75, 1.0, 3.0, 17.5, 30.0, 1000.0, -12.0], dtype=torch.float16)
    following = torch.nextafter(values.abs(), torch.tensor(float("inf"), dtype=torch.float16))
    assert torch.equal(fp16_step(values.float()), (following - values.abs()).float())


def test_a_near_tie_is_within_the_stated_fp16_steps_of_the_top_logit():
    from pipeline.gate.metrics import NEAR_TIE_FP16_STEPS, near_tie_tokens

    step = 2.0**-6  # fp16's step at logits in [16, 32)
    row = torch.tensor(
        [[20.0, 20.0 - NEAR_TIE_FP16_STEPS * step, 20.0 - (NEAR_TIE_FP16_STEPS + 1) * step, 3.0]]
    )
    assert near_tie_tokens(row) == [frozenset({0, 1})]


def test_a_served_divergence_at_a_near_tie_counts_as_agreement_and_is_counted():
    from pipeline.gate.metrics import served_agreement

    gate = [[1, 2, 3, 4], [1, 2, 3, 4], [5, 6]]
    ties = [
        [frozenset({1}), frozenset({2, 9}), frozenset({3}), frozenset({4}), frozenset({0})],
        [frozenset({1}), frozenset({2}), frozenset({3}), frozenset({4}), frozenset({0})],
        [],  # too long for the gate engine's input: no ties known
    ]
    served = [[1, 9, 7, 7], [1, 9, 7, 7], [5, 7]]
    match, tied = served_agreement(gate, served, ties)
    # The first diverges onto a token the gate engine had tied there; the second onto one it had not,
    # a quarter in; the third has no logits to judge by, half in.
    assert tied == 1 and match == pytest.approx((1.0 + 0.25 + 0.5) / 3)
    assert served_agreement(gate, gate, ties) == (1.0, 0)


def test_the_gate_notes_where_its_engine_had_a_near_tie(
    tmp_path_factory, tiny_model_dir, reference, tokenizer, gate_settings
):
    """observe() records, per prompt and position, the tokens within the margin of the top one, from the
    model's own logits over prompt + continuation: the greedy token is always among them."""
    from pipeline.gate.data import prepare_inputs
    from pipeline.gate.evaluate import observe

    limits = EngineLimits(max_batch_size=8, max_input_len=64, max_seq_len=96)
    inputs = prepare_inputs(gate_settings, tokenizer, limits)
    seen = observe(reference, inputs, batch_size=4, max_input_len=limits.max_input_len)
    for prompt, continuation, ties in zip(inputs.prompts, seen.continuations, seen.ties, strict=True):
        if len(prompt) + len(continuation) > limits.max_input_len:
            assert ties == []
            continue
        assert len(ties) == len(continuation) + 1
        assert all(token in at for token, at in zip(continuation, ties, strict=False))
