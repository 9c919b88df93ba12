"""manifest.json: what an artifact is, what made it, and every file in it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.hashing import canonical_json, fingerprint_key, sha256_file

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


# (st_dev, st_ino, st_size, st_mtime_ns): names bytes already hashed, so a hard link to them needs no rehash
StatKey = tuple[int, int, int, int]
# Files that do not enter an artifact's content digest: logs carry timestamps, not results.
COSMETIC_SUFFIXES = (".log",)


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class StatRecord(BaseModel):
    """What a file's stat said when its sha256 was last computed: unchanged, the hash still holds."""

    model_config = ConfigDict(frozen=True)
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatRecord:
        return cls(ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str  # relative to the artifact root, POSIX separators
    sha256: str
    size: int

    def entry(self) -> FileEntry:
        """Just path, sha256 and size (what a deterministic manifest such as a release's lists)."""
        return FileEntry(path=self.path, sha256=self.sha256, size=self.size)


class StoredFile(FileEntry):
    """A file of a store artifact: its stat record beside its sha256 makes verifying it O(1)."""

    stat: StatRecord | None = None  # None: unknown (hash to verify)


class Fingerprint(BaseModel):
    """Everything an artifact's key is the hash of. Compared field by field to say why a stage is stale."""

    model_config = ConfigDict(frozen=True)
    stage: str
    stage_version: int
    variant: dict[str, str]
    config: dict[str, Any]
    inputs: dict[str, str]  # input stage name -> that artifact's content digest (Manifest.content_digest)
    tools: dict[str, str]  # distribution -> version ("absent" when not installed)


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    key: str
    fingerprint: Fingerprint
    ok: bool = True  # False for a gate that failed: downstream stages refuse it
    summary: str = ""
    record: dict[str, Any] = Field(default_factory=dict)  # stage-specific, typed by the stage
    files: list[StoredFile] = Field(default_factory=list)
    started_at: datetime
    finished_at: datetime
    duration_s: float
    # sha256 of everything above: a manifest edited by hand ("ok": false, a file's
    # sha256) no longer matches it, and its artifact counts as modified. "" before it is sealed.
    seal: str = ""

    def sealed(self) -> Manifest:
        return self.model_copy(update={"seal": self._content_seal()})

    @property
    def is_sealed(self) -> bool:
        return self.seal == self._content_seal()

    def _content_seal(self) -> str:
        return hashlib.sha256(
            canonical_json(self.model_dump(mode="json", exclude={"seal"})).encode()
        ).hexdigest()

    @property
    def stage(self) -> str:
        return self.fingerprint.stage

    @property
    def content_digest(self) -> str:
        """What a task below this artifact is keyed on: its key, verdict and the bytes of its files.

        Different bytes (a rebuild that wrote other engines) give another digest, so every task below
        goes stale; a verdict never travels with bytes it did not judge."""
        files = [[f.path, f.sha256, f.size] for f in self.files if not f.path.endswith(COSMETIC_SUFFIXES)]
        return fingerprint_key({"key": self.key, "ok": self.ok, "files": files})


def list_files(
    root: Path,
    known_sha256: Mapping[str, str] | None = None,
    trusted: Mapping[StatKey, str] | None = None,
) -> list[StoredFile]:
    """Hash every regular file under root (but root's manifest.json), sorted by path, with its stat record.

    known_sha256: digests the stage computed from the bytes it wrote, by path. trusted: digests of
    verified files by stat key; a hard link to one of them is the same bytes and needs no hashing.
    """
    known, trusted = known_sha256 or {}, trusted or {}
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p != root / MANIFEST_NAME):
        rel = path.relative_to(root).as_posix()
        st = path.stat()  # before hashing: a change while hashing leaves a record that no longer matches
        sha = known.get(rel) or trusted.get(stat_key(st)) or sha256_file(path)
        entries.append(StoredFile(path=rel, sha256=sha, size=st.st_size, stat=StatRecord.of(st)))
    return entries
