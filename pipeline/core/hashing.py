"""Content hashes: files (sha256, streamed) and fingerprints (sorted-key JSON)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    return sha256_and_stat(path)[0]


def sha256_and_stat(path: Path) -> tuple[str, os.stat_result]:
    """The sha256 of the file open at path, and that file's stat taken before it was read: a stat
    that still matches later names these bytes (a file replaced or written since has another)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), st


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint_key(value: Any) -> str:
    """A stable 20-hex-digit key for any JSON-able value."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:20]
