"""Calibrate (when the precision needs it) and export a checkpoint, verified.

    export_checkpoint(model_dir, precision, settings, out_dir, reporter=..., log=..., checkpoint=...)

loads the Hugging Face model (bf16, on the GPU when one is visible), runs the
ModelOpt recipe for the precision over the calibration data, then exports what the
backend reads (`checkpoint`): the TensorRT-LLM checkpoint with ModelOpt's
export_tensorrt_llm_checkpoint (tp 1), weight-only exports labelled the way
TensorRT-LLM 1.2.1 does, verified (and where safe repaired); or ModelOpt's unified
Hugging Face checkpoint (pipeline.calibration.unified), verified.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.calibration import unified
from pipeline.calibration.data import token_samples
from pipeline.calibration.loop import CalibrationLoop, Forward, model_forward
from pipeline.calibration.quiet import output_to_log
from pipeline.calibration.ranges import linear_input_ranges, summarize_layers
from pipeline.calibration.recipes import Recipe, recipe_for
from pipeline.calibration.records import CalibrationRecord, CalibrationRun, DatasetRef, Repair
from pipeline.calibration.verify import (
    CHECKPOINT_CONFIG,
    RANK0_WEIGHTS,
    block_problems,
    read_safetensors_header,
    verify_checkpoint,
)
from pipeline.core.atomic import write_text_atomic
from pipeline.core.errors import InputError, StageError
from pipeline.core.reporter import Reporter
from pipeline.datasets.jsonl import LoadedTexts, load_texts
from pipeline.facts.architecture import HF_CONFIG, Architecture
from pipeline.facts.config import CalibrationSection, Precision
from pipeline.facts.layout import CheckpointKind

VERSIONED = ("nvidia-modelopt", "torch", "transformers")


@dataclass(frozen=True)
class Placement:
    device: str
    dtype_name: str  # torch dtype name the model is loaded in


def choose_placement(cuda_available: bool) -> Placement:
    """bf16 on the GPU when one is visible, else bf16 on the CPU (half the memory of fp32;
    ModelOpt keeps its scaling math in fp32 either way)."""
    return Placement(device="cuda" if cuda_available else "cpu", dtype_name="bfloat16")


def export_checkpoint(
    model_dir: Path,
    precision: Precision | str,
    settings: CalibrationSection,
    out_dir: Path,
    *,
    reporter: Reporter,
    log: logging.Logger,
    instruct: bool = False,
    kv_cache_dtype: str = "fp16",
    checkpoint: CheckpointKind = "tensorrt-llm",
    forward: Forward = model_forward,
) -> CalibrationRecord:
    """Write a verified TensorRT-LLM checkpoint (config.json + rank0.safetensors) into out_dir.

    model_dir: a Hugging Face model folder (config, tokenizer, *.safetensors).
    precision: a row of pipeline.facts.formats: fp16 / bf16 (unquantized), int8_wo (W8A16), int8_sq (W8A8
        SmoothQuant), int4_awq (W4A16 AWQ), fp8 (W8A8 FP8; ModelOpt calibrates it on the CPU too:
        the target's SM decides where it runs, not where it is calibrated).
    settings: the config's calibration section (dataset, samples, seq_len, batch_size, alpha, seed).
    instruct: wrap each calibration text in the tokenizer's chat template.
    kv_cache_dtype: "int8" adds an INT8 KV cache (calibrated K/V scales).
    forward: the call that runs one calibration batch (tests inject out-of-memory here).
    Raises InputError (bad data) or CheckpointMismatchError (the export disagrees with the Hugging Face config).
    """
    import torch

    precision = Precision(precision)
    placement = choose_placement(torch.cuda.is_available())
    with output_to_log(log):  # importing ModelOpt warns about the transformers version
        recipe = recipe_for(
            precision,
            smoothquant_alpha=settings.smoothquant_alpha,
            kv_cache_dtype=kv_cache_dtype,
            checkpoint=checkpoint,
        )
    arch = Architecture.load(model_dir)
    unfit = block_problems(arch, recipe.format)
    if unfit:
        raise InputError(
            f"cannot quantize this model to {precision.value}: {'; '.join(unfit)}",
            path=model_dir / HF_CONFIG,
            hint="choose int8_sq or int8_wo for this model",
        )
    # Bad data fails here, before minutes of model loading.
    data = load_texts(settings.dataset, limit=settings.samples) if recipe.calibrates else None
    torch.manual_seed(settings.seed)

    t0 = time.perf_counter()
    model, tokenizer = _load(model_dir, placement, log)
    load_s = time.perf_counter() - t0
    reporter.info(f"loaded {model_dir.name} ({placement.dtype_name} on {placement.device}) in {load_s:.1f}s")

    t0 = time.perf_counter()
    calibration = None
    if data is not None:
        calibration = _calibrate(
            model, tokenizer, recipe, data, settings, placement, instruct, reporter, log, forward
        )
    elif recipe.quantizes:
        _quantize_weights(model, recipe, log)
    else:
        log.info("%s: no ModelOpt quantization (weights exported as they are)", precision.value)
    calibration_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    repairs: list[Repair] = []
    if checkpoint == "tensorrt-llm":
        export_dtype = recipe.format.export_dtype
        _export(model, recipe, out_dir, export_dtype, log)
        repairs = verify_checkpoint(
            out_dir,
            arch,
            quant_algo=recipe.quant_algo,
            kv_cache_quant_algo=recipe.kv_cache_quant_algo,
            export_dtype=export_dtype,
        )
        tensors = len(read_safetensors_header(out_dir / RANK0_WEIGHTS))
    else:
        export_dtype = unified.export_dtype(recipe, placement.dtype_name)
        unified.export_unified(model, tokenizer, recipe, out_dir, export_dtype, log)
        tensors = unified.verify_unified(
            out_dir,
            arch,
            quant_algo=recipe.quant_algo,
            kv_cache_quant_algo=recipe.kv_cache_quant_algo,
            dtype=export_dtype,
        )
    export_s = time.perf_counter() - t0
    for r in repairs:
        reporter.warn(f"checkpoint config: set {r.field} = {r.fixed!r} (was {r.found!r}: {r.reason})")
        log.warning("repaired %s: %r -> %r (%s)", r.field, r.found, r.fixed, r.reason)

    return CalibrationRecord(
        precision=precision.value,
        quant_algo=recipe.quant_algo,
        kv_cache_quant_algo=recipe.kv_cache_quant_algo,
        export_dtype=export_dtype,
        device=placement.device,
        load_dtype=placement.dtype_name,
        versions={d: metadata.version(d) for d in VERSIONED},
        calibration=calibration,
        load_s=round(load_s, 3),
        calibration_s=round(calibration_s, 3),
        export_s=round(export_s, 3),
        repairs=repairs,
        tensors=tensors,
    )


def _load(model_dir: Path, placement: Placement, log: logging.Logger) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("loading %s as %s on %s", model_dir, placement.dtype_name, placement.device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, placement.dtype_name), use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise StageError("calibrate", f"cannot load the model from {model_dir}: {exc}") from exc
    return model.to(placement.device).eval(), tokenizer


def _calibrate(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    data: LoadedTexts,
    settings: CalibrationSection,
    placement: Placement,
    instruct: bool,
    reporter: Reporter,
    log: logging.Logger,
    forward: Forward,
) -> CalibrationRun:
    """Run the ModelOpt recipe over the data; what it saw goes into the record."""
    import modelopt.torch.quantization as mtq

    samples = token_samples(data.texts, tokenizer, seq_len=settings.seq_len, instruct=instruct)
    if len(data.texts) < settings.samples:
        reporter.warn(
            f"{data.path.name} has {len(data.texts)} texts; calibration.samples asks for {settings.samples}"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loop = CalibrationLoop(
        samples,
        batch_size=settings.batch_size,
        pad_id=pad_id,
        device=placement.device,
        reporter=reporter,
        log=log,
        forward=forward,
    )
    log.info("calibrating %s on %d samples of %s", recipe.precision.value, len(samples), data.path)
    with output_to_log(log):
        mtq.quantize(model, recipe.modelopt_cfg, forward_loop=loop)
    return CalibrationRun(
        dataset=DatasetRef(
            path=str(data.path),
            sha256=data.sha256,
            records=data.records,
            origin=data.manifest.origin if data.manifest else None,
        ),
        samples=len(samples),
        tokens=loop.result.tokens,
        seq_len=settings.seq_len,
        batch_size=settings.batch_size,
        final_batch_size=loop.result.final_batch_size,
        backoffs=loop.result.backoffs,
        smoothquant_alpha=settings.smoothquant_alpha if recipe.precision is Precision.int8_sq else None,
        instruct_template=instruct,
        activation_ranges=summarize_layers(linear_input_ranges(model)),
    )


def _quantize_weights(model: Any, recipe: Recipe, log: logging.Logger) -> None:
    """A recipe that reads no data (weight-only INT8): ModelOpt's max calibration of the weights alone."""
    import modelopt.torch.quantization as mtq

    log.info("quantizing %s weights (no calibration data)", recipe.precision.value)
    with output_to_log(log):
        mtq.quantize(model, recipe.modelopt_cfg, forward_loop=None)


def _export(model: Any, recipe: Recipe, out_dir: Path, export_dtype: str, log: logging.Logger) -> None:
    import torch
    from modelopt.torch.export import export_tensorrt_llm_checkpoint

    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), output_to_log(log):
        export_tensorrt_llm_checkpoint(
            model,
            decoder_type="llama",
            dtype=getattr(torch, export_dtype),
            export_dir=out_dir,
            inference_tensor_parallel=1,
        )
    if recipe.modelopt_quantizes_weights:
        return
    # As TensorRT-LLM 1.2.1's quantize_by_modelopt: an unquantized export, labelled with the
    # algorithm TensorRT-LLM applies to these weights when it builds (W8A16, or none).
    config_path = out_dir / CHECKPOINT_CONFIG
    config = json.loads(config_path.read_text())
    config.setdefault("quantization", {})["quant_algo"] = recipe.quant_algo
    write_text_atomic(config_path, json.dumps(config, indent=4) + "\n")
    log.info("labelled %s quant_algo=%s", config_path, recipe.quant_algo)
