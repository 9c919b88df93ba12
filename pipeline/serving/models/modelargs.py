"""What a Python-backend model reads from the `args` Triton gives `initialize`.

Copied next to each model.py of a published repository (self-contained).
"""

from __future__ import annotations

import json
from pathlib import Path


def model_config(args: dict) -> dict:
    return json.loads(args["model_config"])


def parameters(config: dict) -> dict[str, str]:
    """The config.pbtxt `parameters` as plain strings."""
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def repository_path(args: dict, value: str) -> Path:
    """A path parameter: absolute as given, or relative to the model repository's root.

    args["model_repository"] is the model's own folder (<root>/<model name>), so
    relative paths keep a published repository relocatable.
    """
    path = Path(value)
    return path if path.is_absolute() else Path(args["model_repository"]).parent / path
