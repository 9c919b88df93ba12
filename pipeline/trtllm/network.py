"""Check the network trtllm-build exports with --visualize_network (ONNX, for inspection in Netron)."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import StageError


def check_onnx_files(directory: Path, *, stage: str = "build") -> list[Path]:
    """Every .onnx file under directory, each passing onnx.checker; refuses an empty export."""
    import onnx

    files = sorted(directory.rglob("*.onnx"))
    if not files:
        raise StageError(stage, f"--visualize_network wrote no .onnx file under {directory}")
    for path in files:
        try:
            # By path, so a graph over 2 GiB (external data) is checked too.
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StageError(stage, f"{path.name} is not a valid ONNX model: {first}") from None
    return files
