"""The format table: one row per precision and KV cache, and everything that reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.backends import BACKENDS
from pipeline.core.errors import ConfigError
from pipeline.facts.config import _default_thresholds, parse_config
from pipeline.facts.formats import (
    FORMATS,
    KV_CACHE_FORMATS,
    Precision,
    builds_paged_context_fmha,
    kv_cache_format,
    reads_calibration_data,
    unsupported_on_gpu,
)
from pipeline.facts.targets import TARGETS


def test_every_precision_has_one_row_and_every_quantized_row_a_runtime_kernel():
    from pipeline.runtime.kvcache import KV_CODECS
    from pipeline.runtime.weights import KERNELS

    assert set(FORMATS) == set(Precision)
    assert {f.quant_algo for f in FORMATS.values() if f.quant_algo} == set(KERNELS)
    assert {k.quant_algo for k in KV_CACHE_FORMATS.values() if k.quant_algo} == set(KV_CODECS)


def test_modelopt_presets_named_by_the_rows_exist_in_modelopt_0_37():
    import modelopt.torch.quantization as mtq

    for fmt in FORMATS.values():
        if fmt.modelopt_config is not None:
            assert isinstance(getattr(mtq, fmt.modelopt_config)["quant_cfg"], dict), fmt.precision


def test_gate_defaults_come_from_the_rows_each_with_its_reason():
    defaults = _default_thresholds()
    for precision, fmt in FORMATS.items():
        assert defaults[precision].max_perplexity_increase_pct == fmt.gate.max_perplexity_increase_pct
        assert defaults[precision].min_top1_agreement == fmt.gate.min_top1_agreement
        assert len(fmt.gate.reason) > 20
    assert "AWQ" in FORMATS[Precision.int4_awq].gate.reason and "FP8" in FORMATS[Precision.fp8].gate.reason


def test_sm_limits_apply_to_engines_on_gpus_and_the_reference_backend_runs_every_format():
    engine, reference = BACKENDS["trtllm-engine"], BACKENDS["reference"]
    for name in ("a100-40gb", "a100-80gb", "a10g"):
        assert (
            unsupported_on_gpu("trtllm-engine", "fp8", "fp16", TARGETS[name].sm).problem
            == "fp8 needs sm89 or newer"
        )
        assert engine.format_problem(Precision.fp8, "fp16", TARGETS[name]).problem.startswith(
            "fp8 needs sm89 or newer"
        )
    for name in ("l4", "h100-80gb", "h200"):
        assert unsupported_on_gpu("trtllm-engine", "fp8", "fp16", TARGETS[name].sm) is None
        assert engine.format_problem(Precision.fp8, "fp16", TARGETS[name]) is None
    for precision in Precision:
        assert reference.format_problem(precision, "int8", TARGETS["cpu"]) is None
        assert unsupported_on_gpu("trtllm-engine", precision, "int8", 89) is None
    assert unsupported_on_gpu("trtllm-engine", "int4_awq", "int8", TARGETS["a100-40gb"].sm) is None


def test_fp8_brings_its_own_kv_cache_and_int8_kv_turns_paged_context_fmha_off():
    assert kv_cache_format("fp8", "int8").name == "fp8"
    assert kv_cache_format("int4_awq", "int8").name == "int8"
    assert builds_paged_context_fmha(True, KV_CACHE_FORMATS["int8"]) is False
    assert builds_paged_context_fmha(True, KV_CACHE_FORMATS["fp16"]) is True
    assert builds_paged_context_fmha(False, KV_CACHE_FORMATS["fp8"]) is False
    # Which exports read calibration data: activation statistics or K/V scales.
    assert not reads_calibration_data("int8_wo", "fp16") and reads_calibration_data("int8_wo", "int8")
    assert reads_calibration_data("int4_awq", "fp16") and reads_calibration_data("fp8", "fp16")


CONFIG = """
[model]
name = "m"
source = "tiny"
[target]
gpu = "{gpu}"
[quantization]
precisions = [{precisions}]
kv_cache_dtype = "{kv}"
[[profiles]]
name = "p"
max_batch_size = 1
max_input_len = 64
max_seq_len = 128
"""


def _config(gpu: str, precisions: str, kv: str = "fp16"):
    return parse_config(CONFIG.format(gpu=gpu, precisions=precisions, kv=kv), "t.toml", Path("."))


def test_config_validation_reads_the_table():
    with pytest.raises(ConfigError) as err:
        _config("a100-40gb", '"int4_awq", "fp8"')
    assert err.value.field == "quantization.precisions[1]" and "sm89" in str(err.value)
    assert _config("h100-80gb", '"int4_awq", "fp8"', "int8").quantization.precisions[1] is Precision.fp8
    every = ", ".join(f'"{p.value}"' for p in Precision)
    assert len(_config("cpu", every, "int8").quantization.precisions) == len(Precision)
    with pytest.raises(ConfigError, match="quantization.kv_cache_dtype"):
        _config("cpu", '"int8_sq"', "fp8")  # fp8 KV comes only with the fp8 precision
