"""publish-manifest.json: what a published repository is, what made it, and every file in it.

Deterministic (no timestamps): two publishes of the same artifacts write the
same bytes, which is how a republish is recognized as a no-op.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_serializer

from pipeline.core.manifest import FileEntry

RELEASE_MANIFEST = "publish-manifest.json"
SCHEMA_VERSION = 2  # 2: the backend joined the variant


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelRef(_Frozen):
    name: str
    source: str  # hub / local / tiny
    repo_id: str | None
    commit: str | None  # the resolved hub commit (None for a generated or local model)


class EngineRef(_Frozen):
    target: str
    sm: int | None
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    path: str  # inside the repository


class ServingRef(_Frozen):
    serve_with: str  # the container tag (or, with the reference backend, the bundled tritonserver)
    triton_backend: str
    decoupled: bool
    batching_strategy: str | None  # None: the LLM API schedules (a PyTorch-backend release)
    kv_cache_free_gpu_mem_fraction: float
    triton_max_batch_size: int
    gpt_model_path: str
    # The one place the TensorRT-LLM backend finds the engine: gpt_model_path is absolute, so this
    # version serves only when mounted (or lying) here. None: a relative path (the reference backend).
    mount_path: str | None = None
    # A PyTorch-backend release (pipeline.serving.pytorch.release): Triton's llmapi repository is its
    # `llmapi/` folder, and trtllm_serve the exact trtllm-serve argv of its bundle. None: the
    # five-model tensorrtllm repository is the release itself.
    llmapi_repository: str | None = None
    trtllm_serve: list[str] | None = None

    @model_serializer(mode="wrap")
    def _engine_releases_unchanged(self, handler):
        """Leave the PyTorch-only fields out when unset: an engine release's manifest keeps its bytes,
        so republishing it stays a no-op."""
        data = handler(self)
        for name in ("llmapi_repository", "trtllm_serve"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class GateRef(_Frozen):
    ok: bool
    summary: str
    key: str  # the gate artifact's key in the store


class ReleaseManifest(_Frozen):
    schema_version: int = SCHEMA_VERSION
    model: ModelRef
    backend: str  # the config's [[backends]] name (what the runtime that built it plays)
    precision: str
    profile: str
    engine: EngineRef
    versions: dict[str, str]  # tensorrt_llm, tensorrt (as recorded by the build)
    serving: ServingRef
    gate: GateRef
    files: list[FileEntry]  # every file of the repository but this manifest, sorted by path

    @property
    def variant(self) -> tuple[str, ...]:
        """(model, backend, precision, profile): the folders of the destination that hold this variant's
        versions."""
        return (self.model.name, self.backend, self.precision, self.profile)
