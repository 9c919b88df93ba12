"""The CPU reference runtime: runs a TensorRT-LLM checkpoint with TensorRT-LLM's semantics.

It is the engine of the `reference` backend and the oracle that proves an
export right. `ReferenceModel` pulls in torch, so it is imported on first use:
`import pipeline.runtime` stays cheap for modules the CLI loads at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.runtime.checkpoint import CheckpointConfig
from pipeline.runtime.limits import EngineLimits

if TYPE_CHECKING:
    from pipeline.runtime.model import ReferenceModel

__all__ = ["CheckpointConfig", "EngineLimits", "ReferenceModel"]


def __getattr__(name: str) -> Any:
    if name == "ReferenceModel":
        from pipeline.runtime.model import ReferenceModel

        return ReferenceModel
    raise AttributeError(f"module 'pipeline.runtime' has no attribute {name!r}")
