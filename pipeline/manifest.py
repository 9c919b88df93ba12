"""manifest.json: what an artifact is, what made it, and every file in it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.hashing import sha256_file

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str  # relative to the artifact root, POSIX separators
    sha256: str
    size: int


class Fingerprint(BaseModel):
    """Everything an artifact's key is the hash of. Compared field by field to say why a stage is stale."""

    model_config = ConfigDict(frozen=True)
    stage: str
    stage_version: int
    variant: dict[str, str]
    config: dict[str, Any]
    inputs: dict[str, str]  # input stage name -> that artifact's key
    tools: dict[str, str]  # distribution -> version ("absent" when not installed)


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    key: str
    fingerprint: Fingerprint
    ok: bool = True  # False for a gate that failed: downstream stages refuse it
    summary: str = ""
    record: dict[str, Any] = Field(default_factory=dict)  # stage-specific, typed by the stage
    files: list[FileEntry] = Field(default_factory=list)
    started_at: datetime
    finished_at: datetime
    duration_s: float

    @property
    def stage(self) -> str:
        return self.fingerprint.stage


def list_files(root: Path, known_sha256: dict[str, str] | None = None) -> list[FileEntry]:
    """Hash every regular file under root (manifest.json excluded), sorted by path."""
    known = known_sha256 or {}
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        rel = path.relative_to(root).as_posix()
        sha = known.get(rel) or sha256_file(path)
        entries.append(FileEntry(path=rel, sha256=sha, size=path.stat().st_size))
    return entries


def verify_files(root: Path, entries: list[FileEntry]) -> list[str]:
    """Return a problem line per file that is missing or differs from its entry."""
    problems = []
    for entry in entries:
        path = root / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{entry.path}: size {path.stat().st_size} != {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest")
    return problems
