"""The accuracy gate's wall time and the reference runtime's decode speed.

Two models: the project's tiny Mistral (trained 300 steps) and a ~150M-parameter
Mistral of the same family (random weights: only the time is measured on it).
Each is exported int8_sq with the pipeline's own export, then gated with the
embedded default's gate settings against the unquantized Hugging Face model,
on the throughput profile's limits. The runtime's tokens/s is measured at
batch 1 and 8 with greedy decoding and a KV cache.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from pipeline.facts.config import load_config
from pipeline.runtime.limits import EngineLimits

# hidden 1024, 13 layers, GQA 16/8 heads, FFN 2816, vocab of the tiny tokenizer: ~151M parameters.
MEDIUM = {
    "hidden_size": 1024,
    "num_hidden_layers": 13,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "intermediate_size": 2816,
}
PROMPT_LEN, NEW_TOKENS = 32, 64


def _medium_model(tiny_dir: Path, out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    config = MistralConfig.from_pretrained(tiny_dir)
    for key, value in MEDIUM.items():
        setattr(config, key, value)
    config.head_dim = MEDIUM["hidden_size"] // MEDIUM["num_attention_heads"]
    torch.manual_seed(0)
    model = MistralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _gate_seconds(model_dir: Path, checkpoint: Path, limits: EngineLimits) -> tuple[float, object]:
    from transformers import AutoTokenizer

    from pipeline.backends.reference import ReferenceRunner
    from pipeline.core.reporter import RecordingReporter
    from pipeline.facts.config import Precision
    from pipeline.gate import HuggingFaceModel, run_gate
    from pipeline.runtime import ReferenceModel

    def engine() -> ReferenceRunner:
        return ReferenceRunner(ReferenceModel.load(checkpoint, limits=limits), engine_config={})

    config = load_config(None)
    t0 = time.perf_counter()
    record = run_gate(
        reference=lambda: HuggingFaceModel.load(model_dir),
        candidate=engine,  # the gate engine
        served=engine,  # a served engine of the same checkpoint
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        settings=config.gate,
        thresholds=config.gate.thresholds[Precision.int8_sq],
        limits=limits,
        served_limits=limits,
        precision="int8_sq",
        profile="throughput",
        reporter=RecordingReporter(),
    )
    return time.perf_counter() - t0, record


def _tokens_per_second(checkpoint: Path, batch: int) -> float:
    import torch

    from pipeline.runtime import ReferenceModel

    model = ReferenceModel.load(checkpoint)
    prompts = torch.randint(5, model.config.vocab_size, (batch, PROMPT_LEN)).tolist()
    model.generate(prompts, max_new_tokens=4)  # warm-up
    t0 = time.perf_counter()
    model.generate(prompts, max_new_tokens=NEW_TOKENS)
    return batch * NEW_TOKENS / (time.perf_counter() - t0)


def main() -> None:
    import torch

    from pipeline.calibration import export_checkpoint
    from pipeline.core.reporter import RecordingReporter
    from pipeline.hub.tiny_model import generate_tiny_mistral

    config = load_config(None)
    throughput = config.profile("throughput")
    limits = EngineLimits.of_profile(throughput)
    print(
        f"torch threads: {torch.get_num_threads()}; gate settings of the embedded default "
        f"({config.gate.eval_samples} windows, {len(Path(config.gate.prompts).read_text().splitlines())} prompts "
        f"x {config.gate.max_new_tokens} tokens), profile 'throughput' {limits}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        tiny = generate_tiny_mistral(root / "tiny")
        print(f"tiny model generated and trained in {time.perf_counter() - t0:.1f}s")
        medium = _medium_model(tiny, root / "medium")
        for name, model_dir in (("tiny", tiny), ("~150M", medium)):
            from transformers import AutoConfig

            params = sum(p.numel() for p in _load_hf(model_dir).parameters())
            checkpoint = root / f"{name}-int8_sq"
            t0 = time.perf_counter()
            export_checkpoint(
                model_dir,
                "int8_sq",
                config.calibration,
                checkpoint,
                reporter=RecordingReporter(),
                log=logging.getLogger("bench_gate"),
            )
            export_s = time.perf_counter() - t0
            seconds, record = _gate_seconds(model_dir, checkpoint, limits)
            layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
            print(
                f"{name} model ({params / 1e6:.1f}M parameters, {layers} layers): int8_sq export {export_s:.1f}s; "
                f"gate {seconds:.1f}s wall (reference {record.reference_s:.1f}s, candidate {record.candidate_s:.1f}s), "
                f"verdict {'pass' if record.verdict else 'FAIL'}"
                + (" (random weights: only the time means something)" if model_dir == medium else "")
            )
            for batch in (1, 8):
                print(
                    f"  reference runtime int8_sq, batch {batch}: {_tokens_per_second(checkpoint, batch):.0f} tokens/s "
                    f"({PROMPT_LEN}-token prompts, {NEW_TOKENS} new tokens, greedy, KV cache)"
                )


def _load_hf(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)
