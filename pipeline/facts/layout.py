"""Where things lie inside the store's artifacts, and what the builds keep beside the work dir.

The one place these names are spelled; stages write and read through the helpers, so a
reader who has an artifact's path never rebuilds a folder name:

    store/fetch/<key>/
        model/                the Hugging Face folder (model_dir)
    store/calibrate/<backend>/<precision>/<key>/
        checkpoint/           the checkpoint (checkpoint_dir) of the backend's kind (CheckpointKind):
                              tensorrt-llm: config.json + rank0.safetensors;
                              hf-unified: ModelOpt's unified Hugging Face checkpoint: config.json,
                              model.safetensors, hf_quant_config.json (HF_QUANT_CONFIG) when
                              quantized, the tokenizer's files
    store/build/<backend>/<precision>/<profile>/<key>/ (and store/gate_engine/<backend>/<precision>/gate/<key>/)
        engine/               the engine (engine_dir; the files in it: pipeline.backends.trtllm_engine.engine);
                              for hf-unified, the checkpoint's files with the profile's LLM API options
                              (LLM_API_OPTIONS) beside them
        network/              --visualize_network's graph (network_dir)
        timing.cache          the build's own TensorRT timing cache
        trtllm-build.log      trtllm-build's output
    store/gate/<backend>/<precision>/<profile>/<key>/
        gate.json, gate.md, junit.xml
    store/publish/<backend>/<precision>/<profile>/<key>/
        repository/           the Triton model repository (the tree in it: pipeline.serving.repository)
                              or, for the PyTorch backend, a release of two consumers (llmapi_release):
            llmapi/               Triton's llmapi model repository (tensorrt_llm/config.pbtxt, 1/model.yaml)
            checkpoint/<model>/   the Hugging Face checkpoint both read (served_checkpoint_dir)
            trtllm-serve/         llm_api_options.yaml and command.json, the exact trtllm-serve argv
    <work dir>/timing-cache/<model>/<target>-trt<version>.cache   shared by the builds (timing_cache_path)
    <work dir>/../engines/<model>/<backend>/<precision>/<target>/<profile>  a link to a served build (engine_link)
    <work dir>/reports/run.json, run.junit.xml, bench/   what a run and the bench report (reports_dir)
    <work dir>/task-scores/<key>.json   a model's gate.tasks scores, reused by every gate (task_scores_dir)
    <work dir>/datasets/                the hub data sets of gate.tasks, at their revisions (datasets_cache_dir)

Every artifact's manifest.json is pipeline.core.manifest's; the store's own folders (store/,
logs/) are pipeline.core.store's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pipeline.facts.targets import Target

# What calibrate exports: TensorRT-LLM's checkpoint (trtllm-build's input, the engine backend's) or
# ModelOpt's unified Hugging Face checkpoint (export_hf_checkpoint; the PyTorch backend's).
CheckpointKind = Literal["tensorrt-llm", "hf-unified"]

MODEL = "model"
CHECKPOINT = "checkpoint"
ENGINE = "engine"
NETWORK = "network"
TIMING_CACHE = "timing.cache"
BUILD_LOG = "trtllm-build.log"
GATE_JSON = "gate.json"
GATE_MD = "gate.md"
JUNIT_XML = "junit.xml"
REPOSITORY = "repository"
# ModelOpt's export_hf_checkpoint writes the quantization here (and in config.json's quantization_config).
HF_QUANT_CONFIG = "hf_quant_config.json"
# The LLM API options of one profile (pipeline.backends.trtllm_pytorch.options), beside the checkpoint.
LLM_API_OPTIONS = "llm_api_options.yaml"
TIMING_CACHE_ROOT = "timing-cache"
ENGINES_ROOT = "engines"
REPORTS = "reports"
RUN_REPORT = "run.json"
RUN_JUNIT = "run.junit.xml"
BENCH = "bench"
LLMAPI_REPOSITORY = "llmapi"
SERVED_CHECKPOINTS = "checkpoint"
SERVE_BUNDLE = "trtllm-serve"
SERVE_COMMAND = "command.json"
TASK_SCORES = "task-scores"
DATASETS = "datasets"


def model_dir(fetch: Path) -> Path:
    """The Hugging Face model folder of a fetch artifact."""
    return fetch / MODEL


def checkpoint_dir(calibrate: Path) -> Path:
    """The TensorRT-LLM checkpoint of a calibrate artifact."""
    return calibrate / CHECKPOINT


def engine_dir(build: Path) -> Path:
    """The engine folder of a build (or gate engine) artifact."""
    return build / ENGINE


def network_dir(build: Path) -> Path:
    return build / NETWORK


def timing_cache_path(work_dir: Path, model: str, target: Target, tensorrt_version: str | None) -> Path:
    """The timing cache the builds of a model on a target share (pipeline.stages.build)."""
    # TensorRT refuses a timing cache from another GPU or TensorRT version: key it by both.
    return work_dir / TIMING_CACHE_ROOT / model / f"{target.name}-trt{tensorrt_version}.cache"


def engine_link(work_dir: Path, model: str, backend: str, precision: str, target: str, profile: str) -> Path:
    """The engines/ link to a served engine's build artifact, beside the work dir."""
    return (work_dir.parent / ENGINES_ROOT).joinpath(model, backend, precision, target, profile)


def served_checkpoint_dir(release: Path, model: str) -> Path:
    """The Hugging Face checkpoint inside a PyTorch-backend release. trtllm-serve names the model it
    serves after this folder (/v1/models), so the folder is the model's name."""
    return release / SERVED_CHECKPOINTS / model


def reports_dir(work_dir: Path) -> Path:
    """The work dir's reports: run.json and run.junit.xml of the last run, bench/ by default."""
    return work_dir / REPORTS


def task_scores_dir(work_dir: Path) -> Path:
    return work_dir / TASK_SCORES


def datasets_cache_dir(work_dir: Path) -> Path:
    return work_dir / DATASETS


def released_checkpoint(build_files: dict[str, str]) -> dict[str, str]:
    """Of a PyTorch-backend build's engine/ files (path: sha256), those its release's checkpoint folder
    holds: all but the LLM API options, which reach both consumers through files of their own."""
    return {path: sha for path, sha in build_files.items() if path != LLM_API_OPTIONS}
