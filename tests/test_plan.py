"""The memory plan: Mistral 7B figures checked by hand, refusals, and the `plan` command."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.core.errors import ConfigError, InputError
from pipeline.facts.architecture import KNOWN_ARCHITECTURES
from pipeline.facts.config import Precision, Profile, load_config
from pipeline.facts.formats import unsupported_on_gpu
from pipeline.facts.targets import TARGETS
from pipeline.planning.memory import find_architecture, plan_config, plan_memory, plan_profile

MISTRAL = KNOWN_ARCHITECTURES["mistralai/Mistral-7B-Instruct-v0.3"]
GIB = 1024**3

# Hand-checked Mistral 7B v0.3 (hidden 4096, 32 layers, 32 heads, 8 KV heads, head_dim 128, FFN 14336,
# vocab 32768):
#   linears per layer: qkv 4096 x (4096 + 2 x 1024) = 25,165,824; dense 4096 x 4096 = 16,777,216;
#   fc + gate 4096 x 2 x 14336 = 117,440,512; proj 14336 x 4096 = 58,720,256 -> 218,103,808; x 32 layers
LINEAR_PARAMS = 218_103_808 * 32  # 6,979,321,856
#   embedding + lm_head 2 x 32768 x 4096 = 268,435,456, norms (2 x 32 + 1) x 4096 = 266,240
UNQUANTIZED_PARAMS = 268_435_456 + 266_240
#   one FP32 scale per output channel: (6144 + 4096 + 2 x 14336 + 4096) x 32 layers x 4 B
SCALES = 43_008 * 32 * 4  # 5,505,024
INT8_WEIGHTS = LINEAR_PARAMS * 1 + SCALES + UNQUANTIZED_PARAMS * 2  # 7,522,230,272 B = 7.006 GiB
KV_PER_TOKEN_FP16 = 2 * 32 * 8 * 128 * 2  # 131,072 B = 128 KiB


def profile(name="p", batch=1, input_len=7168, seq=8192, **extra) -> Profile:
    return Profile(name=name, max_batch_size=batch, max_input_len=input_len, max_seq_len=seq, **extra)


def test_mistral_int8_on_a100_40gb_reproduces_the_published_estimate():
    plan = plan_memory(MISTRAL, Precision.int8_sq, "fp16", TARGETS["a100-40gb"], profile())
    assert plan.params == LINEAR_PARAMS + UNQUANTIZED_PARAMS == 7_248_023_552  # "~7.25B params"
    assert plan.weight_bytes == INT8_WEIGHTS == 7_522_230_272
    assert round(plan.weight_bytes / GIB) == 7  # "about 7 GB of weights"
    assert plan.headroom_bytes == 40 * GIB - INT8_WEIGHTS
    assert round(plan.headroom_bytes / GIB) == 33  # "33 GB headroom"
    assert plan.kv_bytes_per_token == KV_PER_TOKEN_FP16 == 128 * 1024
    # max_num_tokens = min(8192, 1 x 7168); allowance = 1 GiB + 7168 x (3 x 14336 + 2 x 4096) x 2 B
    # MLP activations = 1,807,745,024 B; a served engine gathers no context logits
    assert plan.max_num_tokens == 7168 and not plan.gather_context_logits
    assert plan.allowance_bytes == GIB + 7168 * 51_200 * 2 == 1_807_745_024
    # KV budget = 0.9 x (35,427,442,688 - 1,807,745,024) = 30,257,727,897 B; 1 GiB per 8192-token sequence
    assert plan.kv_budget_bytes == int(0.9 * (plan.headroom_bytes - 1_807_745_024)) == 30_257_727_897
    assert plan.largest_batch == 28
    assert plan.largest_seq_len == 30_257_727_897 // KV_PER_TOKEN_FP16 == 230_848
    # 1555 GB/s over 7,522,230,272 - 268,435,456 (embedding table) + 8192 (one row) B per token
    assert plan.decode_ceiling_tok_s == round(1555e9 / 7_253_803_008, 1) == 214.4
    assert plan.decode_ceiling_at_max_seq_tok_s == round(
        1555e9 / (7_253_803_008 + KV_PER_TOKEN_FP16 * 8192), 1
    )
    assert plan.fits and plan.problem is None
    lines = {line.figure: line for line in plan.derivation}
    assert "6,979,321,856 x 8 bits" in lines["weights"].how and lines["weights"].value == "7.01 GiB"
    assert lines["headroom"].value == "32.99 GiB"
    assert "1555 GB/s" in lines["batch-1 decode ceiling"].how


def test_mistral_on_a100_80gb_throughput_profile():
    plan = plan_memory(
        MISTRAL, Precision.int8_wo, "fp16", TARGETS["a100-80gb"], profile(batch=64, input_len=1536, seq=2048)
    )
    assert plan.weight_bytes == INT8_WEIGHTS
    assert plan.headroom_bytes == 80 * GIB - INT8_WEIGHTS == 78_377_115_648
    # max_num_tokens = min(8192, 64 x 1536); allowance = 1 GiB + 8192 x 51,200 x 2 (no context logits:
    # gathered, they would add 8192 x 32768 x 4 B in the engine and 64 x 1536 x 32768 x 4 B in the runner)
    assert plan.max_num_tokens == 8192
    assert plan.allowance_bytes == GIB + 8192 * 51_200 * 2 == 1_912_602_624
    assert plan.kv_budget_bytes == int(0.9 * (78_377_115_648 - 1_912_602_624)) == 68_818_061_721
    # 256 MiB per 2048-token sequence
    assert plan.largest_batch == 68_818_061_721 // (KV_PER_TOKEN_FP16 * 2048) == 256
    assert plan.kv_needed_bytes == 64 * 2048 * KV_PER_TOKEN_FP16 == 16 * GIB
    assert plan.decode_ceiling_tok_s == round(2039e9 / 7_253_803_008, 1) == 281.1


#   INT4 AWQ: 4 bits per linear weight + one FP16 scale per 128 inputs of each output + one FP16
#   pre-quant scale per input channel ((3 x 4096 + 4096 + 14336) x 32) + FP16 embedding, lm_head, norms
INT4_AWQ_WEIGHTS = LINEAR_PARAMS // 2 + (LINEAR_PARAMS // 128 + 30_720 * 32) * 2 + UNQUANTIZED_PARAMS * 2


def test_mistral_int4_awq_on_a100_40gb():
    plan = plan_memory(MISTRAL, Precision.int4_awq, "fp16", TARGETS["a100-40gb"], profile())
    assert plan.weight_bytes == INT4_AWQ_WEIGHTS == 4_138_082_304  # 3.85 GiB: "about 3.9 GiB"
    lines = {line.figure: line for line in plan.derivation}
    assert lines["weights"].value == "3.85 GiB"
    assert (
        "6,979,321,856 x 4 bits" in lines["weights"].how
        and "/ 128 x 2 B group scales" in lines["weights"].how
    )
    # The same ceiling formula as INT8's 214: weights read once per token, of the embedding one row.
    read = INT4_AWQ_WEIGHTS - 268_435_456 + 8192
    assert plan.decode_ceiling_tok_s == round(1555e9 / read, 1) == 401.8
    assert plan.fits and plan.paged_context_fmha


def test_int8_kv_cache_halves_kv_per_token_doubles_the_batch_and_turns_chunked_context_off():
    fp16_kv = plan_memory(MISTRAL, Precision.int8_sq, "fp16", TARGETS["a100-40gb"], profile())
    int8_kv = plan_memory(MISTRAL, Precision.int8_sq, "int8", TARGETS["a100-40gb"], profile())
    assert int8_kv.kv_bytes_per_token == 64 * 1024 == KV_PER_TOKEN_FP16 // 2
    assert (fp16_kv.largest_batch, int8_kv.largest_batch) == (28, 56)  # sequences of 8192 tokens
    assert fp16_kv.paged_context_fmha and not int8_kv.paged_context_fmha
    lines = {line.figure: line for line in int8_kv.derivation}
    assert lines["chunked context (paged context FMHA)"].value == "off"
    # No chunked context: every prompt must fit one step, so max_num_tokens covers max_input_len...
    long = profile(batch=1, input_len=30720, seq=32768)
    assert plan_memory(MISTRAL, Precision.int8_sq, "int8", TARGETS["a100-80gb"], long).max_num_tokens == 30720
    # ... and a max_num_tokens set below it is refused before anything runs.
    short = profile(input_len=7168, max_num_tokens=4096)
    refused = plan_memory(MISTRAL, Precision.int8_sq, "int8", TARGETS["a100-80gb"], short)
    assert not refused.fits and "set max_num_tokens >= max_input_len" in refused.problem


def test_fp16_and_int8_kv_change_weights_and_kv_per_token():
    fp16 = plan_memory(MISTRAL, Precision.fp16, "int8", TARGETS["a100-80gb"], profile())
    assert fp16.weight_bytes == (LINEAR_PARAMS + UNQUANTIZED_PARAMS) * 2  # no scales
    assert fp16.kv_bytes_per_token == KV_PER_TOKEN_FP16 // 2


def test_max_num_tokens_without_paged_context_fmha_holds_a_whole_prompt():
    small = profile(batch=1, input_len=30720, seq=32768)
    assert plan_memory(MISTRAL, Precision.int8_sq, "fp16", TARGETS["a100-80gb"], small).max_num_tokens == 8192
    whole = plan_memory(
        MISTRAL, Precision.int8_sq, "fp16", TARGETS["a100-80gb"], small, paged_context_fmha=False
    )
    assert whole.max_num_tokens == 30720
    explicit = profile(input_len=7168, max_num_tokens=4096)
    refused = plan_memory(
        MISTRAL, Precision.int8_sq, "fp16", TARGETS["a100-80gb"], explicit, paged_context_fmha=False
    )
    assert not refused.fits and "chunked context" in refused.problem


def test_profile_that_does_not_fit_is_refused_with_what_would():
    config = load_config(None)
    big = profile(name="huge", batch=64, input_len=30720, seq=32768)
    config = config.model_copy(
        update={"target": config.target.model_copy(update={"gpu": "a100-40gb"}), "profiles": (big,)}
    )
    with pytest.raises(ConfigError) as info:
        plan_profile(config, MISTRAL, "trtllm-engine", Precision.int8_sq, "huge")
    assert info.value.field == "profiles[0]"
    # budget 0.9 x (32.99 - 2.99) GiB = 27.19 GiB; 4 GiB per 32768-token sequence -> 6
    assert "largest batch at max_seq_len 32768: 7" in info.value.message
    assert "largest max_seq_len at batch 64: 3595" in info.value.message


def test_fp8_on_sm80_and_oversized_weights_do_not_fit():
    fp8 = plan_memory(MISTRAL, Precision.fp8, "fp16", TARGETS["a100-40gb"], profile())
    assert not fp8.fits and "sm89" in fp8.problem
    assert plan_memory(MISTRAL, Precision.fp8, "fp16", TARGETS["h100-80gb"], profile()).fits
    fp16_on_l4 = plan_memory(MISTRAL, Precision.fp16, "fp16", TARGETS["l4"], profile(batch=8))
    assert not fp16_on_l4.fits and "KV cache" in fp16_on_l4.problem


def test_architecture_sources(tmp_path, repo_root):
    real = load_config(repo_root / "pipeline.toml")
    assert find_architecture(real) is MISTRAL
    fetched = tmp_path / "model"
    fetched.mkdir()
    hf = {
        "vocab_size": 1000,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 512,
    }
    (fetched / "config.json").write_text(json.dumps(hf))
    arch = find_architecture(real, fetched)
    assert (arch.vocab_size, arch.num_hidden_layers, arch.head_dim) == (1000, 3, 32)
    tiny = find_architecture(load_config(None))
    assert tiny.source == "TinyMistralSpec" and (tiny.num_key_value_heads, tiny.head_dim) == (1, 64)
    unknown = real.model_copy(update={"model": real.model.model_copy(update={"repo_id": "org/unknown"})})
    with pytest.raises(InputError, match="not known before it is fetched"):
        find_architecture(unknown)


def test_plan_config_covers_every_target_precision_and_profile(repo_root):
    real = load_config(repo_root / "pipeline.toml")
    plans = plan_config(real, MISTRAL, ("a100-40gb", "a100-80gb"))
    assert len(plans) == 2 * 4 * (3 + 1)  # 2 targets x 4 (backend, precision) x 3 profiles and the gate's
    assert {(p.backend, p.precision) for p in plans} == {(b, p.value) for b, p in real.variants}
    assert all(p.fits for p in plans)
    assert [p.gather_context_logits for p in plans] == [p.profile == "gate" for p in plans]


def test_the_gate_engine_plan_states_the_gates_own_memory_need(repo_root):
    """The gate's engine: gate.batch_size windows of eval_seq_len tokens, with the context logits it
    returns (the engine's FP32 output rows and ModelRunnerCpp's padded (batch, max_input_len, vocab) copy)."""
    real = load_config(repo_root / "pipeline.toml")
    gate = plan_profile(real, MISTRAL, "trtllm-engine", Precision.int8_sq, "gate")
    assert (gate.max_batch_size, gate.max_input_len, gate.max_seq_len) == (8, 1024, 1024 + 64)
    assert gate.gather_context_logits and gate.max_num_tokens == 8192
    logits = (8192 + 8 * 1024) * 32_768 * 4  # 2 GiB
    assert gate.allowance_bytes == GIB + 8192 * 51_200 * 2 + logits
    assert gate.kv_needed_bytes == 8 * 1088 * KV_PER_TOKEN_FP16
    allowance = {line.figure: line for line in gate.derivation}["activation/workspace allowance"]
    assert "context logits (the engine's, and the runner's padded copy)" in allowance.how
    served = plan_profile(real, MISTRAL, "trtllm-engine", Precision.int8_sq, "throughput")
    assert (
        "no context logits"
        in {line.figure: line for line in served.derivation}["activation/workspace allowance"].how
    )


def test_plan_command_prints_the_derivation(repo_root, tmp_path, capsys):
    code = main(["plan", "--config", str(repo_root / "pipeline.toml"), "--work-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "7.01 GiB" in out and "32.99 GiB" in out and "214 tok/s" in out
    assert "how: a100-40gb / trtllm-engine / int8_sq / long-context" in out
    assert "how: a100-40gb / trtllm-pytorch / int4_awq / long-context" in out


def test_plan_command_on_the_documented_int4_awq_variant(repo_root, tmp_path, capsys):
    text = (repo_root / "pipeline.toml").read_text()
    # The engine backend alone: the PyTorch backend has no INT8 KV cache.
    text = text.replace('precisions = ["int8_sq", "int8_wo"]', 'precisions = ["int4_awq"]')
    text = text[: text.index('[[backends]]\nname = "trtllm-pytorch"')] + text[text.index("[quantization]") :]
    path = tmp_path / "awq.toml"
    path.write_text(text.replace('kv_cache_dtype = "fp16"', 'kv_cache_dtype = "int8"'))
    assert main(["plan", "--config", str(path), "--work-dir", str(tmp_path), "--json"]) == 0
    plans = {p["profile"]: p for p in json.loads(capsys.readouterr().out)["plans"]}
    latency = plans["latency"]
    assert latency["precision"] == "int4_awq" and latency["weight_bytes"] == INT4_AWQ_WEIGHTS
    assert latency["kv_bytes_per_token"] == 65_536 and latency["decode_ceiling_tok_s"] == 401.8
    assert not latency["paged_context_fmha"] and plans["long-context"]["max_num_tokens"] == 30720
    assert all(p["fits"] for p in plans.values())


def test_plan_command_json_with_another_target(repo_root, tmp_path, capsys):
    args = ["plan", "--config", str(repo_root / "pipeline.toml"), "--target", "a100-80gb", "--json"]
    assert main([*args, "--work-dir", str(tmp_path)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert {p["target"] for p in body["plans"]} == {"a100-40gb", "a100-80gb"}
    first = body["plans"][0]
    assert first["weight_bytes"] == INT8_WEIGHTS and first["derivation"][0]["figure"] == "parameters"


def test_plan_command_exits_2_on_a_profile_that_does_not_fit(repo_root, tmp_path, capsys):
    text = (repo_root / "pipeline.toml").read_text().replace("max_batch_size = 4\n", "max_batch_size = 64\n")
    path = tmp_path / "big.toml"
    path.write_text(text)
    assert main(["plan", "--config", str(path), "--work-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "profiles[2]" in err and "largest batch at max_seq_len 32768: 7" in err


def test_plan_command_refuses_an_unknown_target(tmp_path, in_repo_root, capsys):
    assert main(["plan", "--target", "a100-20gb", "--work-dir", str(tmp_path)]) == 2
    assert "--target a100-20gb" in capsys.readouterr().err


def test_gpu_table_has_the_issue_targets():
    for name, sm in {
        "a100-40gb": 80,
        "a100-80gb": 80,
        "h100-80gb": 90,
        "h200": 90,
        "l4": 89,
        "a10g": 86,
    }.items():
        target = TARGETS[name]
        assert target.sm == sm
        assert (unsupported_on_gpu("trtllm-engine", "fp8", "fp16", sm) is None) == (sm >= 89)
    assert TARGETS["a100-40gb"].bandwidth_gb_s == 1555 and TARGETS["a100-80gb"].memory_gib == 80


def test_plan_exits_2_when_a_profile_does_not_fit_a_target_asked_for(repo_root, tmp_path, capsys):
    """pipeline.toml fits its A100 40GB; an L4 (24 GB) cannot hold the throughput profile's KV cache."""
    args = ["plan", "--config", str(repo_root / "pipeline.toml"), "--work-dir", str(tmp_path)]
    assert main([*args, "--target", "l4", "--summary"]) == 2
    captured = capsys.readouterr()
    assert (
        "profiles[1]: 'throughput' does not fit l4 with trtllm-engine int8_sq: needs 16.00 GiB"
        in captured.err
    )
    rows = [line for line in captured.out.splitlines() if line.startswith("│")]
    config = load_config(repo_root / "pipeline.toml")
    per_target = len(config.variants) * (len(config.profiles) + 1)  # + the gate engine
    assert len(rows) == 2 * per_target  # --summary: one row each, no derivations
    assert "how:" not in captured.out
