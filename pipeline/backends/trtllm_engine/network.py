"""Record the network graph trtllm-build writes with --visualize_network (for viewing in Netron).

The graph is not a model ONNX tools can check or run: TensorRT-LLM writes one
node per TensorRT layer, its op type the layer type's name ("LayerType.MATRIX_MULTIPLY")
in the "com.nvidia" domain that no opset import declares, so `onnx.checker` rejects it.
It is recorded (listed, hashed by the manifest), never validated as ONNX.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import StageError


def network_files(directory: Path, *, stage: str = "build") -> list[Path]:
    """Every file --visualize_network wrote under directory; refuses an export that wrote nothing."""
    files = sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []
    if not files:
        raise StageError(
            stage, f"trtllm-build exited 0 but --visualize_network wrote nothing under {directory}"
        )
    return files
