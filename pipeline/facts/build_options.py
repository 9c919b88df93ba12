"""The trtllm-build choices the config offers, and what each needs. The one home of these facts.

Read by config validation (pipeline.facts.config, before any stage runs) and by the build
(pipeline.backends.trtllm_engine.argv passes the value on as it is). Sources, TensorRT-LLM 1.2.x:
- gemm_plugin: tensorrt_llm/plugin/plugin.py @ c20322ff (PluginConfig.gemm_plugin is
  Optional[Literal["auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", None]];
  add_plugin_argument offers None as "disable"). "fp8" runs FP8 GEMMs, which need the FP8 tensor
  cores of sm89 and newer (the fp8 row of pipeline.facts.formats); "nvfp4" is the FP4 format that
  Blackwell (sm100) introduced (TensorRT-LLM docs, features/quantization: "FP4 and FP8 ... on the
  latest Blackwell and Hopper GPUs").
- kv_cache_type: commands/build.py takes continuous, paged or disabled, but both consumers of an
  engine need paged: the gate's ModelRunnerCpp and Triton's in-flight batching both run
  TrtGptModelInflightBatching, whose constructor throws "TrtGptModelInflightBatching requires GPT
  attention/Mamba Conv 1d plugin with packed input and paged KV cache"
  (cpp/tensorrt_llm/batch_manager/trtGptModelInflightBatching.cpp @ 00825c4e).
"""

from __future__ import annotations

from pipeline.facts.formats import ENGINE, FORMATS, Precision

# gemm_plugin value -> the oldest GPU architecture that runs it (None: every GPU's).
GEMM_PLUGINS: dict[str, int | None] = {
    "auto": None,
    "float16": None,
    "float32": None,
    "bfloat16": None,
    "int32": None,
    "fp8": FORMATS[Precision.fp8].kernels[ENGINE].min_sm,
    "nvfp4": 100,
    "disable": None,
}

KV_CACHE_TYPES = ("paged",)
KV_CACHE_TYPE_REASON = (
    "the gate's ModelRunnerCpp and Triton's in-flight batching both need a paged KV cache "
    "(TrtGptModelInflightBatching refuses any other)"
)


def gemm_plugin_problem(value: str, sm: int | None) -> str | None:
    """Why a GPU of architecture `sm` cannot run gemm_plugin `value`, or None (also for the CPU, sm None:
    the reference runtime builds no TensorRT network)."""
    min_sm = GEMM_PLUGINS[value]
    if sm is None or min_sm is None or sm >= min_sm:
        return None
    return f"gemm_plugin '{value}' needs sm{min_sm} or newer"
