"""Our five models declare every input and output the TensorRT-LLM backend's own declare: same name, data
type, dims and optional flag, so the backend's clients (end_to_end_grpc_client.py,
inflight_batcher_llm_client.py) work with our repository unchanged.

Upstream's declarations are vendored in tests/data/tensorrtllm_backend_interface.json (tests have no
network), transcribed from triton_backend/all_models/inflight_batcher_llm/<model>/config.pbtxt of
NVIDIA/TensorRT-LLM at the commit named per model there; tensorrtllm_backend r26.04 (commit
ce68ff5fd0a746eac895cfb4a5677b329c5bc707) takes these files from its tensorrt_llm submodule.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

import pytest
from google.protobuf import text_format
from test_publish import parsed, values
from tritonclient.grpc import model_config_pb2

UPSTREAM = json.loads((Path(__file__).parent / "data" / "tensorrtllm_backend_interface.json").read_text())
MODELS = sorted(UPSTREAM["models"])

Declaration = tuple[str, str, tuple[int, ...], bool]


def upstream(model: str, kind: str) -> set[Declaration]:
    """Upstream's declarations, its ${...} data types filled as our publish fills them."""
    filled = values().substitutions()
    return {
        (name, Template(dtype).substitute(filled), tuple(dims), optional)
        for name, dtype, dims, optional in UPSTREAM["models"][model][kind]
    }


def ours(model: str, kind: str) -> set[Declaration]:
    config = parsed(model)
    return {
        (t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), getattr(t, "optional", False))
        for t in getattr(config, kind)
    }


def test_the_vendored_declarations_cite_a_commit_and_cover_the_five_models():
    assert MODELS == ["ensemble", "postprocessing", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls"]
    assert all(len(m["commit"]) == 40 for m in UPSTREAM["models"].values())


@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("model", MODELS)
def test_every_upstream_tensor_is_declared_alike(model, kind):
    """A set difference, so the failure names each tensor that is missing or declared otherwise."""
    assert upstream(model, kind + "s") - ours(model, kind) == set()


@pytest.mark.parametrize("model", MODELS)
def test_we_declare_no_tensor_upstream_lacks(model):
    """A client of ours is a client of the backend's too."""
    for kind in ("input", "output"):
        names = {name for name, *_ in upstream(model, kind + "s")}
        assert {name for name, *_ in ours(model, kind)} - names == set()


def test_the_comparison_sees_a_difference_in_dims_type_or_optional():
    """The differ itself: a declaration changed in any field is caught."""
    config = parsed("ensemble")
    top_p = next(i for i in config.input if i.name == "top_p")
    top_p.optional = False
    changed = model_config_pb2.ModelConfig()
    text_format.Parse(text_format.MessageToString(config), changed)
    declared = {
        (t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), t.optional)
        for t in changed.input
    }
    assert upstream("ensemble", "inputs") - declared == {("top_p", "TYPE_FP32", (1,), True)}
