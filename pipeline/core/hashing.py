"""Content hashes: files (sha256, streamed) and fingerprints (sorted-key JSON)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint_key(value: Any) -> str:
    """A stable 20-hex-digit key for any JSON-able value."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:20]
