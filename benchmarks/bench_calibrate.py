"""Calibration wall time and peak memory: our int8_sq calibrate+export path against a bare
ModelOpt loop (load, mtq.quantize with INT8_SMOOTHQUANT_CFG, export) on the same ~150M-parameter
random Mistral and the same data, in the same run. Goal: ours <= 1.1x the bare loop.

Each variant runs in its own process (so peak RSS is its own), twice, alternating; the best
time of each counts. Imports are outside the timed region in both.

    python -m benchmarks.bench_calibrate               # both variants, prints the figures
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "calib_data" / "offline-mix.jsonl"
SAMPLES, SEQ_LEN, BATCH = 32, 128, 8
GOAL = 1.1


def make_model(out: Path) -> int:
    """A random Mistral of ~150M parameters (GQA, rope_theta 1e6) with the tiny model's tokenizer."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from pipeline.hub.tiny_model import TinyMistralSpec, generate_tiny_mistral

    generate_tiny_mistral(out, TinyMistralSpec(train_steps=0))  # tokenizer files (and a model, replaced)
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=32768,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    model = MistralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def run_ours(model_dir: Path, out: Path) -> float:
    import modelopt.torch.export  # noqa: F401
    import modelopt.torch.quantization  # noqa: F401

    from pipeline.calibration import export_checkpoint
    from pipeline.calibration.recipes import recipe_for  # noqa: F401  (import outside the timing)
    from pipeline.core.reporter import RecordingReporter
    from pipeline.facts.config import CalibrationSection

    settings = CalibrationSection(dataset=DATASET, samples=SAMPLES, seq_len=SEQ_LEN, batch_size=BATCH)
    t0 = time.perf_counter()
    export_checkpoint(
        model_dir, "int8_sq", settings, out, reporter=RecordingReporter(), log=logging.getLogger("bench")
    )
    return time.perf_counter() - t0


def run_bare(model_dir: Path, out: Path) -> float:
    import copy

    import modelopt.torch.quantization as mtq
    import torch
    from modelopt.torch.export import export_tensorrt_llm_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = [json.loads(line)["text"] for line in DATASET.open()][:SAMPLES]
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batches = [
        tokenizer(
            texts[i : i + BATCH], return_tensors="pt", padding=True, truncation=True, max_length=SEQ_LEN
        )
        for i in range(0, len(texts), BATCH)
    ]

    def forward_loop(m):
        with torch.no_grad():
            for batch in batches:
                m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)

    cfg = copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG)
    cfg["algorithm"] = {"method": "smoothquant", "alpha": 0.5}
    mtq.quantize(model, cfg, forward_loop)
    with torch.inference_mode():
        export_tensorrt_llm_checkpoint(
            model, decoder_type="llama", dtype=torch.float16, export_dir=out, inference_tensor_parallel=1
        )
    return time.perf_counter() - t0


def child(variant: str, model_dir: str, out: str) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # ModelOpt prints; keep stdout for the JSON line
        seconds = (run_ours if variant == "ours" else run_bare)(Path(model_dir), Path(out))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_rss_mib": peak_mib}))


def measure(variant: str, model_dir: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_calibrate", variant, str(model_dir), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-calibrate-") as tmp:
        model_dir = Path(tmp) / "model"
        params = make_model(model_dir)
        print(
            f"model: random Mistral, {params / 1e6:.0f}M parameters (bf16, CPU); data: {SAMPLES} x {SEQ_LEN} tokens"
        )
        runs: dict[str, list[dict]] = {"ours": [], "bare": []}
        for attempt in range(2):
            for variant in ("ours", "bare"):
                runs[variant].append(measure(variant, model_dir, Path(tmp) / f"{variant}-{attempt}"))
        best = {v: min(r["seconds"] for r in rs) for v, rs in runs.items()}
        peak = {v: max(r["peak_rss_mib"] for r in rs) for v, rs in runs.items()}
        for variant in ("ours", "bare"):
            times = ", ".join(f"{r['seconds']:.2f}s" for r in runs[variant])
            print(f"{variant:>4}: best {best[variant]:.2f}s ({times}), peak RSS {peak[variant]:.0f} MiB")
        ratio = best["ours"] / best["bare"]
        verdict = "ok" if ratio <= GOAL else "ABOVE GOAL"
        print(f"calibrate+export vs bare ModelOpt loop: {ratio:.2f}x (goal <= {GOAL}x: {verdict})")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        child(*sys.argv[1:])
    else:
        main()
