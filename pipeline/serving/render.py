"""Render the five config.pbtxt templates with strict substitution, and check them.

Every template value comes from one typed model (RepositoryValues); a `${name}`
the values do not fill raises, and every rendered file is parsed with Triton's
own ModelConfig schema, so no placeholder, unknown field or bad enum reaches a
published repository.
"""

from __future__ import annotations

from importlib import resources
from string import Template
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import StageError

MODEL_NAMES = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
CONFIG_NAME = "config.pbtxt"


class RepositoryValues(BaseModel):
    """Every value the templates need, typed. Field names are the template keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    triton_max_batch_size: Annotated[int, Field(ge=1)]  # repository.client_batch_size
    triton_backend: Literal["tensorrtllm", "python"]  # python: the reference runtime
    engine_dir: str  # -> gpt_model_path; relative paths resolve against the repository root
    tokenizer_dir: str
    decoupled_mode: bool
    batching_strategy: Literal["inflight_fused_batching", "inflight_batching"] = "inflight_fused_batching"
    kv_cache_free_gpu_mem_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    max_queue_delay_microseconds: Annotated[int, Field(ge=0)]
    max_queue_size: Annotated[int, Field(ge=0)] = 0  # 0: unbounded
    batch_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = "guaranteed_no_evict"
    enable_kv_cache_reuse: bool
    enable_chunked_context: bool
    exclude_input_in_output: bool = True
    max_beam_width: Annotated[int, Field(ge=1)] = 1
    logits_datatype: Literal["TYPE_FP32", "TYPE_FP16", "TYPE_BF16"] = "TYPE_FP32"
    encoder_input_features_data_type: Literal["TYPE_FP16", "TYPE_BF16", "TYPE_FP32"] = "TYPE_FP16"
    prompt_embedding_table_data_type: Literal["TYPE_FP16", "TYPE_BF16", "TYPE_FP32"] = "TYPE_FP16"
    add_special_tokens: bool = True  # the prompt gets the tokenizer's BOS, as the reference does
    preprocessing_instance_count: Annotated[int, Field(ge=1)]
    postprocessing_instance_count: Annotated[int, Field(ge=1)]
    bls_instance_count: Annotated[int, Field(ge=1)] = 1  # repository.bls_instance_count
    accumulate_tokens: bool = True
    tensorrt_llm_model_name: str = "tensorrt_llm"
    preprocessing_model_name: str = "preprocessing"

    def substitutions(self) -> dict[str, str]:
        """Template text for each value: pbtxt booleans are lowercase."""
        out = {}
        for key, value in self.model_dump().items():
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def template_text(model: str) -> str:
    return resources.files("pipeline.serving").joinpath("templates", model, CONFIG_NAME).read_text()


def render_config(model: str, values: RepositoryValues, *, template: str | None = None) -> str:
    """The rendered config.pbtxt of `model`, checked against Triton's schema."""
    text = template if template is not None else template_text(model)
    try:
        rendered = Template(text).substitute(values.substitutions())
    except KeyError as exc:
        raise StageError(
            "publish",
            f"template {model}/{CONFIG_NAME} needs ${{{exc.args[0]}}}, which RepositoryValues does not provide",
        ) from None
    except ValueError as exc:  # a lone '$' or a malformed placeholder
        raise StageError("publish", f"template {model}/{CONFIG_NAME}: {exc}") from None
    parse_model_config(rendered, f"{model}/{CONFIG_NAME}", expected_name=model)
    return rendered


def parse_model_config(text: str, source: str, *, expected_name: str | None = None):
    """Parse with tritonclient's ModelConfig protobuf: unknown fields and bad enums are refused."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise StageError("publish", f"{source} is not a valid Triton model config: {exc}") from None
    if expected_name is not None and config.name != expected_name:
        raise StageError("publish", f"{source} names model '{config.name}', expected '{expected_name}'")
    return config
