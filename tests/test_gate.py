"""The accuracy gate: it passes good int8 checkpoints of the tiny model and FAILS broken ones.

A gate that cannot fail is worth nothing: each corruption below is a real export bug
(rope_theta dropped by a newer transformers, q/k rows mixed up by a converter, scales
off by a constant, a layer lost) and must fail with the default thresholds of
pipeline.config. Candidates run on the reference runtime; the reference is the
unquantized Hugging Face model.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from pipeline.config import GateSection, Precision, _default_thresholds
from pipeline.gate import GateRecord, HuggingFaceModel, run_gate, write_reports
from pipeline.gate.metrics import greedy_match, perplexity_increase_pct, top1_agreement, window_stats
from pipeline.gate.verdict import GateCheck
from pipeline.reporting import RecordingReporter
from pipeline.runtime import ReferenceModel, RuntimeLimits
from tiny_checkpoints import tiny_checkpoint

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parent.parent
LIMITS = RuntimeLimits(max_batch_size=8, max_input_len=64, max_seq_len=96)


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

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        key = ("logits", tuple(map(tuple, input_ids.tolist())))
        if key not in self.memo:
            self.memo[key] = self.model.logits(input_ids)
        return self.memo[key]

    def generate(self, prompts, *, max_new_tokens, end_id=None):
        key = ("generate", tuple(map(tuple, prompts)), max_new_tokens, end_id)
        if key not in self.memo:
            self.memo[key] = self.model.generate(prompts, max_new_tokens=max_new_tokens, end_id=end_id)
        return self.memo[key]


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> MemoizedReference:
    return MemoizedReference(HuggingFaceModel.load(tiny_model_dir))


@pytest.fixture(scope="module")
def gate(reference, tokenizer, gate_settings):
    def run(checkpoint: Path, precision: str) -> GateRecord:
        return run_gate(
            reference=lambda: reference,
            candidate=lambda: ReferenceModel.load(checkpoint, limits=LIMITS),
            tokenizer=tokenizer,
            settings=gate_settings,
            thresholds=_default_thresholds()[Precision(precision)],
            limits=LIMITS,
            precision=precision,
            profile="test",
            reporter=RecordingReporter(),
        )

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
    for name in [n for n in tensors if n.endswith("attention.qkv.weight") or n.endswith("attention.qkv.weights_scaling_factor")]:
        t = tensors[name].clone()
        q_rows, kv_rows = 64, 32  # tiny model: 4 heads x 16, 2 KV heads x 16
        t[:kv_rows], t[q_rows : q_rows + kv_rows] = tensors[name][q_rows : q_rows + kv_rows], tensors[name][:kv_rows]
        tensors[name] = t


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


@pytest.mark.parametrize("precision", ["int8_sq", "int8_wo"])
def test_gate_passes_a_good_checkpoint(tmp_path_factory, tiny_model_dir, gate, precision):
    record = gate(tiny_checkpoint(tmp_path_factory, tiny_model_dir, precision), precision)
    assert record.verdict, record.summary
    assert [c.name for c in record.checks] == ["perplexity_increase_pct", "top1_agreement", "greedy_match"]
    assert record.windows == 8 and record.window_len == 64 and record.prompts == 8


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_gate_fails_a_corrupted_int8_sq_checkpoint(tmp_path: Path, tmp_path_factory, tiny_model_dir, gate, corruption):
    good = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq")
    record = gate(_corrupt(good, tmp_path / "bad", **CORRUPTIONS[corruption]), "int8_sq")
    assert not record.verdict
    # Each breaks the model outright: perplexity and top-1 agreement both see it, not one by luck.
    assert {"perplexity_increase_pct", "top1_agreement"} <= {c.name for c in record.failed}


@pytest.mark.parametrize("corruption", ["rotary base dropped", "q and k swapped"])
def test_gate_fails_a_corrupted_int8_wo_checkpoint(tmp_path: Path, tmp_path_factory, tiny_model_dir, gate, corruption):
    good = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_wo")
    record = gate(_corrupt(good, tmp_path / "bad", **CORRUPTIONS[corruption]), "int8_wo")
    assert not record.verdict
