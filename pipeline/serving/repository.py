"""Write a Triton model repository in the TensorRT-LLM backend's in-flight-batching shape.

    <root>/ensemble/config.pbtxt, 1/.keep             (Triton needs the version folder; a file keeps it)
    <root>/preprocessing/config.pbtxt, 1/model.py (+ helpers), tokenizer/
    <root>/tensorrt_llm/config.pbtxt, 1/engine/          (+ 1/model.py with the reference backend)
    <root>/postprocessing/config.pbtxt, 1/model.py (+ helpers)
    <root>/tensorrt_llm_bls/config.pbtxt, 1/model.py (+ helpers)

Triton loads every folder of the root as a model, so the tokenizer lives inside
preprocessing/ (a model folder may hold non-version folders) and the Python
models find it through the relative `tokenizer_dir` parameter.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pipeline.core.atomic import link_or_copy
from pipeline.core.errors import InputError
from pipeline.serving.render import CONFIG_NAME, MODEL_NAMES, RepositoryValues, render_config

ENGINE_SUBDIR = "tensorrt_llm/1/engine"
TOKENIZER_SUBDIR = "preprocessing/tokenizer"
# Which of the project's Python models serves each model; tensorrt_llm is Python only with the reference backend.
PYTHON_MODELS = {
    "preprocessing": "preprocessing",
    "postprocessing": "postprocessing",
    "tensorrt_llm_bls": "tensorrt_llm_bls",
}
CPU_ENGINE_MODEL = "tensorrt_llm_cpu"
HELPERS = ("modelargs.py", "offvalues.py", "responding.py", "tensornames.py", "textcodec.py")
KEEP_FILE = ".keep"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def client_batch_size(engine_max_batch_size: int, *, decoupled: bool) -> int:
    """The max_batch_size clients may send: the backend answers a request of batch B > 1 with B
    responses, which only a decoupled model may send, and refuses it otherwise (utils.cc
    createRequestsFromInputTensors). Concurrent requests fill the engine's batch either way."""
    return engine_max_batch_size if decoupled else 1


def bls_instance_count(engine_max_batch_size: int, *, decoupled: bool) -> int:
    """Decoupled, the BLS model serves each request on a worker thread of one instance; otherwise
    execute blocks for a whole generation, so one instance per engine batch slot (the backend's docs)."""
    return 1 if decoupled else engine_max_batch_size


def tokenizer_files(model_dir: Path) -> list[Path]:
    files = [model_dir / name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not any(f.name == "tokenizer_config.json" for f in files):
        raise InputError(
            "no tokenizer_config.json: the serving models cannot load the tokenizer",
            path=model_dir,
            hint="rerun fetch (--force); the model's tokenizer files must be downloaded",
        )
    return files


def write_repository(
    root: Path,
    values: RepositoryValues,
    *,
    engine_dir: Path,
    engine_sha256: dict[str, str],
    tokenizer_dir: Path,
    tokenizer_sha256: dict[str, str],
) -> dict[str, str]:
    """Write the repository at root (created); return the sha256 of every file placed from the gated
    artifacts (engine and tokenizer), by path. Each is hashed where it lies and refused unless it has
    the sha256 given (engine/, tokenizer files by name: from the artifacts' manifests)."""
    models = resources.files("pipeline.serving.models")
    python_models = dict(PYTHON_MODELS)
    if values.triton_backend == "python":
        python_models["tensorrt_llm"] = CPU_ENGINE_MODEL
    for model in MODEL_NAMES:
        version_dir = root / model / "1"
        version_dir.mkdir(parents=True)
        (root / model / CONFIG_NAME).write_text(render_config(model, values))
        source = python_models.get(model)
        if source is None:
            # Triton needs the version folder even when it holds nothing (the ensemble's): a file
            # keeps it in the manifest's file list, and so in every copy of the release.
            (version_dir / KEEP_FILE).write_text(
                "Triton model version 1: its configuration is ../config.pbtxt\n"
            )
        else:
            for name, src in [("model.py", models.joinpath(source, "model.py"))] + [
                (h, models.joinpath(h)) for h in HELPERS
            ]:
                (version_dir / name).write_text(src.read_text())
    sources = {
        f"{TOKENIZER_SUBDIR}/{f.name}": (f, tokenizer_sha256.get(f.name))
        for f in tokenizer_files(tokenizer_dir)
    }
    sources |= {f"{ENGINE_SUBDIR}/{rel}": (engine_dir / rel, sha) for rel, sha in engine_sha256.items()}
    placed = {}
    for target, (src, sha256) in sorted(sources.items()):
        if sha256 is None:
            raise InputError("not in its artifact's manifest", path=src, hint="rerun fetch (--force)")
        link_or_copy(src, root / target, sha256)
        placed[target] = sha256
    return placed
