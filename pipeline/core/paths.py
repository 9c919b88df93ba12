"""Why a path cannot be read as a file or written as a folder, found before any work starts.

Each function returns one phrase for the error line (None: fine), so the caller names the field.
"""

from __future__ import annotations

import os
from pathlib import Path


def _dangling(path: Path) -> Path | None:
    """The first of `path` and its parents that is a symlink to nothing."""
    return next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)


def file_problem(path: Path) -> str | None:
    if path.is_file():
        return None
    link = _dangling(path)
    if link is not None:
        return f"{link} is a symlink to {os.readlink(link)}, which does not exist"
    if path.is_dir():
        return f"{path} is a folder, not a file"
    return f"file not found: {path}"


def dir_problem(path: Path, *, writable: bool = True) -> str | None:
    """Why `path` cannot be (created and) written as a folder; writable=False: why it cannot be read
    as one (a missing folder can: it holds nothing)."""
    link = _dangling(path)
    if link is not None:
        return f"{link} is a symlink to {os.readlink(link)}, which does not exist"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if writable and not os.access(
        existing, os.W_OK | os.X_OK
    ):  # also false on a read-only filesystem, even for root
        return f"{existing} is not writable (read-only filesystem or no permission)"
    return None
