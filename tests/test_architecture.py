"""One model-architecture type: the Hugging Face reader and writer, and the views that derive from it."""

from __future__ import annotations

import math
from pathlib import Path

from tiny_checkpoints import tiny_checkpoint

from pipeline.calibration.verify import expected_tensors
from pipeline.facts.architecture import KNOWN_ARCHITECTURES, Architecture
from pipeline.hub.tiny_model import TINY_SIZES
from pipeline.runtime.checkpoint import parse_checkpoint_config, read_checkpoint_config


def test_the_hugging_face_reader_reads_back_what_the_writer_writes():
    for arch in (*KNOWN_ARCHITECTURES.values(), *(spec.arch for spec in TINY_SIZES.values())):
        assert Architecture.from_hf_config(arch.hf_config(), "config.json") == arch


def test_a_checkpoint_has_the_architecture_of_the_model_it_was_exported_from(
    tiny_model_dir, tmp_path_factory
):
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq")
    assert read_checkpoint_config(checkpoint).arch == Architecture.load(tiny_model_dir)


def test_a_checkpoint_that_leaves_fields_out_gets_tensorrt_llms_defaults():
    config = parse_checkpoint_config(
        {
            "architecture": "MistralForCausalLM",
            "dtype": "float16",
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "hidden_size": 64,
            "vocab_size": 100,
            "hidden_act": "silu",
            "position_embedding_type": "rope_gpt_neox",
        },
        Path("config.json"),
    )
    arch = config.arch
    assert (arch.num_key_value_heads, arch.head_dim, arch.intermediate_size) == (4, 16, 256)
    assert (arch.rope_theta, arch.rms_norm_eps, arch.max_position_embeddings) == (10000.0, 1e-5, None)


def test_the_plan_counts_the_parameters_an_unquantized_checkpoint_holds():
    arch = TINY_SIZES["gpu"].arch
    tensors = expected_tensors(arch, quant_algo=None, kv_cache_quant_algo=None, export_dtype="float16")
    sizes = {name: math.prod(shape or ()) for name, (_, shape) in tensors.items()}
    assert sum(sizes.values()) == arch.params
    linears = [name for name in sizes if name.removesuffix(".weight").endswith(tuple(arch.linears))]
    assert sum(sizes[name] for name in linears) == arch.linear_params
