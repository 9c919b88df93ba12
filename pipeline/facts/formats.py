"""Every precision and KV cache format the pipeline builds: one row each, read by everything else.

The backends (which GPU architecture runs it), the memory plan (bytes per
weight and per scale), the calibration recipes (which ModelOpt 0.37 preset),
the export verifier (which tensors the checkpoint must hold) and the reference
runtime (which kernel runs it) all read these rows. Adding a format is one
row here plus its runtime kernel (`pipeline.runtime.linear`, keyed by
`quant_algo`). Pure: no imports beyond the standard library.

Sources of the facts:
- checkpoint tensors: what ModelOpt 0.37's export_tensorrt_llm_checkpoint writes (checked by running
  it on the CPU: W8A8_SQ_PER_CHANNEL, W4A16_AWQ with group_size 128 and pre_quant_scale, FP8);
- TensorRT-LLM 1.2.x (NVIDIA/TensorRT-LLM builder.py @ 008b2b8d, build(): "Paged Context FMHA is
  disabled because it doesn't work with int8 kv cache currently"; modeling_utils.py @ 27712aa7,
  preprocess_perlayer_weights and process_kv_scaling_factor) for how each is built and read;
- which GPU backend has kernels for each format (`Kernels`, one column per backend):
  - trtllm-engine: TensorRT-LLM 1.2.x's engine builder (fp8 kernels from sm89);
  - trtllm-pytorch: TensorRT-LLM's PyTorch backend, _torch/modules/linear.py get_quant_method (the 1.2-era
    version stored at NVIDIA/TensorRT-LLM; newest stored @ ed53795b): FP8 QDQ/rowwise/block scales,
    NVFP4, weight-only INT8/INT4 per channel (WeightOnlyQuantLinearMethod), W4A16/W4A8 AWQ; any other
    quant mode raises "unsupported quant mode", so W8A8 SmoothQuant has no method;
    docs/source/features/quantization.md @ 09d4c79b, "Hardware Support Matrix": Ampere runs W4A16 AWQ
    and GPTQ and the FP8 KV cache, FP8 weights from Ada (sm89); llmapi/llm_args.py
    (TorchLlmArgs.sync_quant_config_with_kv_cache_config_dtype) turns only kv_cache_config.dtype 'fp8'
    into a quantized KV cache; upstream's parity tracker (#3701) lists W8A8 SmoothQuant and the INT8 KV
    cache as missing from the PyTorch backend;
- the gate defaults' published figures, cited beside each row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Literal

# The GPU backends' names (pipeline.backends), the columns of the kernel table below.
ENGINE = "trtllm-engine"
PYTORCH = "trtllm-pytorch"


class Precision(str, Enum):
    fp16 = "fp16"
    bf16 = "bf16"
    int8_wo = "int8_wo"  # W8A16, per-channel weights quantized by TensorRT-LLM at build
    int8_sq = "int8_sq"  # W8A8 SmoothQuant, per-channel weights, per-tensor activations
    int4_awq = "int4_awq"  # W4A16 AWQ, one scale per 128 inputs of each output channel
    fp8 = "fp8"  # W8A8 FP8 (E4M3), per-tensor scales, FP8 KV cache


@dataclass(frozen=True)
class Kernels:
    """Whether a GPU backend has kernels for a format: from which architecture on, or none at all."""

    min_sm: int | None = None  # oldest GPU architecture whose kernels run it (None: every GPU's)
    missing: str | None = None  # why the backend has no kernels for it on any GPU (None: it has)


EVERY_GPU = Kernels()
FROM_ADA = Kernels(min_sm=89)


@dataclass(frozen=True)
class FormatGap:
    """Why a backend cannot run a format on a GPU: the weights' precision or the KV cache, and the words."""

    part: Literal["precision", "kv_cache"]
    problem: str


@dataclass(frozen=True)
class GateDefaults:
    """Default accuracy thresholds of a format, and why they are what they are."""

    max_perplexity_increase_pct: float
    min_top1_agreement: float
    min_greedy_match: float
    reason: str
    # gate.tasks: the least task score the format keeps, as a share of the unquantized model's.
    min_task_recovery: float
    task_recovery_source: str


# NVIDIA's published MMLU loss per format (TensorRT-LLM's quantization accuracy tables, as cited in
# issue 24: FP8 0.1-0.9 points, INT4 AWQ 0.85-2.1, INT8 SmoothQuant 1.5-2.75 on 7B-180B models), taken
# at its worst over a 60-point baseline (Mistral-7B-Instruct-v0.3 scores about 62 on MMLU) and rounded
# down to the percent: the recovery a sound export of the format keeps.
_MMLU_BASELINE = 60.0


def _recovery_after(points_lost: float) -> float:
    return int((1 - points_lost / _MMLU_BASELINE) * 100) / 100


# How a quantized linear's tensors look in the exported checkpoint (per TensorRT-LLM linear module).
ScaleKind = Literal["channel", "group", "tensor"]


@dataclass(frozen=True)
class LinearLayout:
    weight_dtype: str  # safetensors dtype code of `.weight`
    values_per_element: int  # int4: two values per int8 byte, along the output dimension
    weight_scale: ScaleKind  # `.weights_scaling_factor`: per output channel, per group, per tensor
    activation_scale: bool  # `.activation_scaling_factor`, one per tensor
    prequant_scale: bool  # `.prequant_scaling_factor`, one per input channel (x' = x * s)


@dataclass(frozen=True)
class WeightFormat:
    precision: Precision
    description: str
    weight_bits: int  # bits per linear weight in the engine
    group_size: int | None  # inputs per scale (per-group formats)
    scale_bytes: int  # bytes per weight scale in the engine (FP32 per channel/tensor, FP16 per group)
    quant_algo: str | None  # the checkpoint's quantization.quant_algo
    modelopt_config: str | None  # the ModelOpt 0.37 preset (mtq.<name>); None: ModelOpt leaves weights alone
    # Who turns the weights into the engine's: ModelOpt at export, or trtllm-build from fp16 (W8A16).
    weights_quantized_by: Literal["modelopt", "trtllm-build", "none"]
    layout: LinearLayout | None  # None: floating-point weights in the checkpoint
    kernels: Mapping[str, Kernels]  # per GPU backend (ENGINE, PYTORCH)
    reads_calibration_data: bool  # activation statistics (SmoothQuant, AWQ search, FP8 amax)
    kv_cache: str | None  # the KV cache format it always uses; None: quantization.kv_cache_dtype
    export_dtype: Literal["float16", "bfloat16"]  # dtype of the unquantized tensors
    gate: GateDefaults
    # ModelOpt pads the vocabulary to a multiple of this for the format (rows of zeros in
    # vocab_embedding and lm_head, vocab_size raised to match); None: exported as it is.
    pads_vocab_to: int | None = None

    def exported_vocab_size(self, vocab_size: int) -> int:
        """vocab_size as this format's export writes it (config.json, embedding and lm_head rows)."""
        multiple = self.pads_vocab_to
        return vocab_size if multiple is None else -(-vocab_size // multiple) * multiple

    @property
    def quantized(self) -> bool:
        return self.weight_bits < 16


@dataclass(frozen=True)
class KvCacheFormat:
    name: str
    bytes_per_value: int
    quant_algo: str | None  # the checkpoint's quantization.kv_cache_quant_algo
    # ModelOpt quantizer settings for K and V ("*[kv]_bmm_quantizer"); None: not quantized.
    modelopt_num_bits: int | tuple[int, int] | None
    kernels: Mapping[str, Kernels]  # per GPU backend (ENGINE, PYTORCH)
    # TensorRT-LLM's builder switches paged context FMHA (so chunked context) off for an INT8 KV cache.
    keeps_paged_context_fmha: bool

    @property
    def reads_calibration_data(self) -> bool:
        return self.quant_algo is not None


_UNQUANTIZED = GateDefaults(
    0.5,
    0.98,
    0.9,
    "fp16 engine vs the model: only kernel rounding differs; anything more is a defect",
    min_task_recovery=0.99,
    task_recovery_source="16-bit: only kernel rounding differs from the model",
)
_INT8 = LinearLayout("I8", 1, "channel", activation_scale=True, prequant_scale=True)
_INT4_AWQ = LinearLayout("I8", 2, "group", activation_scale=False, prequant_scale=True)
_FP8 = LinearLayout("F8_E4M3", 1, "tensor", activation_scale=True, prequant_scale=False)
_BOTH = {ENGINE: EVERY_GPU, PYTORCH: EVERY_GPU}
_FP8_KERNELS = {ENGINE: FROM_ADA, PYTORCH: FROM_ADA}

FORMATS: dict[Precision, WeightFormat] = {
    f.precision: f
    for f in (
        WeightFormat(
            precision=Precision.fp16, description="FP16, unquantized",
            weight_bits=16, group_size=None, scale_bytes=0, quant_algo=None, modelopt_config=None,
            weights_quantized_by="none", layout=None, kernels=_BOTH, reads_calibration_data=False,
            kv_cache=None, export_dtype="float16", gate=_UNQUANTIZED,
        ),
        WeightFormat(
            precision=Precision.bf16, description="BF16, unquantized",
            weight_bits=16, group_size=None, scale_bytes=0, quant_algo=None, modelopt_config=None,
            weights_quantized_by="none", layout=None, kernels=_BOTH, reads_calibration_data=False,
            kv_cache=None, export_dtype="bfloat16",
            gate=GateDefaults(1.0, 0.97, 0.8, "bf16 keeps 8 mantissa bits: more rounding than fp16, still lossless",
                              min_task_recovery=0.99, task_recovery_source="16-bit: lossless, as fp16"),
        ),
        WeightFormat(
            precision=Precision.int8_wo, description="W8A16: INT8 weights per channel, FP16 activations",
            weight_bits=8, group_size=None, scale_bytes=4, quant_algo="W8A16", modelopt_config=None,
            weights_quantized_by="trtllm-build", layout=None, kernels=_BOTH, reads_calibration_data=False,
            kv_cache=None, export_dtype="float16",
            gate=GateDefaults(
                2.0, 0.93, 0.6,
                "INT8 weight-only typically loses under 0.5 points on averaged 7B benchmarks; 2% leaves "
                "room for calibration noise and still catches a collapse",
                min_task_recovery=_recovery_after(0.9),
                task_recovery_source="no NVIDIA MMLU row of its own: held to FP8's worst loss (0.9 "
                "points), the 8-bit format that also rounds activations",
            ),
        ),
        WeightFormat(
            precision=Precision.int8_sq,
            description="W8A8 SmoothQuant: INT8 weights per channel, INT8 activations per tensor",
            weight_bits=8, group_size=None, scale_bytes=4, quant_algo="W8A8_SQ_PER_CHANNEL",
            modelopt_config="INT8_SMOOTHQUANT_CFG", weights_quantized_by="modelopt", layout=_INT8,
            kernels={
                ENGINE: EVERY_GPU,
                PYTORCH: Kernels(missing="its linear layers have no W8A8 INT8 method (get_quant_method)"),
            }, reads_calibration_data=True, kv_cache=None, export_dtype="float16",
            gate=GateDefaults(
                3.0, 0.90, 0.5,
                "SmoothQuant W8A8 moves Mistral-7B's wikitext-2 perplexity 5.253 -> 5.277 (+0.5%, the "
                "SmoothQuant authors' table); per-tensor SmoothQuant can collapse, which 3% catches",
                min_task_recovery=_recovery_after(2.75),
                task_recovery_source="NVIDIA's INT8 SmoothQuant MMLU loss, 1.5-2.75 points",
            ),
        ),
        WeightFormat(
            precision=Precision.int4_awq,
            description="W4A16 AWQ: INT4 weights, one FP16 scale per 128 inputs per output",
            weight_bits=4, group_size=128, scale_bytes=2, quant_algo="W4A16_AWQ",
            modelopt_config="INT4_AWQ_CFG", weights_quantized_by="modelopt", layout=_INT4_AWQ,
            kernels=_BOTH, reads_calibration_data=True, kv_cache=None, export_dtype="float16",
            gate=GateDefaults(
                6.0, 0.85, 0.4,
                "AWQ INT4 g128 moves Llama-2-7B's wikitext-2 perplexity 5.47 -> 5.60 (+2.4%, the AWQ "
                "paper's table; round-to-nearest 5.73, +4.8%): 6% allows that loss and calibration noise",
                min_task_recovery=_recovery_after(2.1),
                task_recovery_source="NVIDIA's INT4 AWQ MMLU loss, 0.85-2.1 points",
            ),
            # ModelOpt 0.37 modelopt/torch/export/model_config_export.py (torch_to_tensorrt_llm_checkpoint):
            # for INT4_AWQ and W4A8_AWQ with vocab_size % 64 != 0 it calls postprocess.py's
            # pad_embedding_lm_head (padding_factor=64): zero rows, vocab_size raised to match.
            pads_vocab_to=64,
        ),
        WeightFormat(
            precision=Precision.fp8,
            description="W8A8 FP8 (E4M3): per-tensor weight and activation scales, FP8 KV cache",
            weight_bits=8, group_size=None, scale_bytes=4, quant_algo="FP8",
            modelopt_config="FP8_DEFAULT_CFG", weights_quantized_by="modelopt", layout=_FP8,
            kernels=_FP8_KERNELS, reads_calibration_data=True, kv_cache="fp8", export_dtype="float16",
            gate=GateDefaults(
                2.0, 0.93, 0.6,
                "FP8 E4M3 W8A8 with per-tensor scales is reported near-lossless on 7B models (within ~1% "
                "of FP16 accuracy; Intel's 'Efficient Post-training Quantization with FP8 Formats', 2023)",
                min_task_recovery=_recovery_after(0.9),
                task_recovery_source="NVIDIA's FP8 MMLU loss, 0.1-0.9 points",
            ),
        ),
    )
}  # fmt: skip

KV_CACHE_FORMATS: dict[str, KvCacheFormat] = {
    k.name: k
    for k in (
        KvCacheFormat("fp16", 2, None, None, _BOTH, keeps_paged_context_fmha=True),
        KvCacheFormat(
            "int8",
            1,
            "INT8",
            8,
            {
                ENGINE: EVERY_GPU,
                PYTORCH: Kernels(missing="its KV cache takes only kv_cache_config.dtype 'fp8'"),
            },
            keeps_paged_context_fmha=False,
        ),
        KvCacheFormat("fp8", 1, "FP8", (4, 3), _FP8_KERNELS, keeps_paged_context_fmha=True),
    )
}
# The KV cache formats a user may choose (fp8 comes with the fp8 precision, whose attention is FP8 too).
SELECTABLE_KV_CACHES = ("fp16", "int8")


def weight_format(precision: Precision | str) -> WeightFormat:
    return FORMATS[Precision(precision)]


def kv_cache_format(precision: Precision | str, kv_cache_dtype: str) -> KvCacheFormat:
    """The KV cache a precision's engine has: its own (fp8), else the configured one."""
    return KV_CACHE_FORMATS[weight_format(precision).kv_cache or kv_cache_dtype]


def reads_calibration_data(precision: Precision | str, kv_cache_dtype: str) -> bool:
    """Whether the export depends on calibration data (activation statistics or K/V scales)."""
    return (
        weight_format(precision).reads_calibration_data
        or kv_cache_format(precision, kv_cache_dtype).reads_calibration_data
    )


def builds_paged_context_fmha(requested: bool, kv: KvCacheFormat) -> bool:
    """What trtllm-build really builds: it turns paged context FMHA off for an INT8 KV cache."""
    return requested and kv.keeps_paged_context_fmha


def missing_kernels(backend: str, precision: Precision | str, kv_cache_dtype: str) -> FormatGap | None:
    """Why GPU backend `backend` has no kernels for the format on any GPU, or None; names the backend that
    has. The reference runtime playing `backend` on the CPU refuses the same formats."""
    fmt, kv = weight_format(precision), kv_cache_format(precision, kv_cache_dtype)
    parts = (
        ("precision", fmt.precision.value, fmt.kernels),
        ("kv_cache", f"a {kv.name} KV cache", kv.kernels),
    )
    for part, name, kernels in parts:
        own = kernels[backend]
        if own.missing is not None:
            runs = [b for b, k in kernels.items() if k.missing is None]
            instead = "".join(
                f'; the {b} backend runs it (backends = [{{ name = "{b}", ... }}])' for b in runs
            )
            return FormatGap(part, f"{name} does not run on the {backend} backend: {own.missing}{instead}")
    return None


def unsupported_on_gpu(
    backend: str, precision: Precision | str, kv_cache_dtype: str, sm: int
) -> FormatGap | None:
    """Why GPU backend `backend` cannot run the format on architecture `sm`, or None (missing_kernels,
    then each part's oldest architecture)."""
    gap = missing_kernels(backend, precision, kv_cache_dtype)
    if gap is not None:
        return gap
    fmt, kv = weight_format(precision), kv_cache_format(precision, kv_cache_dtype)
    for name, kernels in ((fmt.precision.value, fmt.kernels), (f"a {kv.name} KV cache", kv.kernels)):
        min_sm = kernels[backend].min_sm
        if min_sm is not None and sm < min_sm:
            return FormatGap(
                "precision" if kernels is fmt.kernels else "kv_cache", f"{name} needs sm{min_sm} or newer"
            )
    return None


def format_for_quant_algo(quant_algo: str | None) -> WeightFormat:
    """The row of a checkpoint's quant_algo (None: unquantized fp16/bf16 share the fp16 row's layout)."""
    return next(f for f in FORMATS.values() if f.quant_algo == quant_algo)
