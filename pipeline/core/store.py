"""The artifact store: one directory per (stage, variant, key), complete or absent.

Layout under the work dir:

    store/<stage>/<variant...>/<key>/manifest.json   a complete artifact
    store/<stage>/<variant...>/LATEST                 key of the newest one (to say why a stage is stale)
    store/<stage>/<variant...>/.tmp-<key>-<nonce>/    being written; never read
    store/<stage>/<variant...>/<key>.modified-<time>/  an artifact that failed its manifest, kept aside
    logs/<stage>/<variant...>/<key>.log               the stage's log, kept on failure too

A stage writes into a fresh `.tmp-*` directory; the manifest is written last,
every file is made read-only, and the directory is renamed into place, so a
final name always holds a whole artifact. Replacing an artifact (--force)
moves the old one aside first and restores it if the process dies before the
new one is in place. Each manifest records every file's sha256 and stat, so
`check` verifies an artifact in one stat per file (pipeline.core.integrity).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from pipeline.core.atomic import (
    FILE_MODE,
    protect,
    recover_aside,
    replace_dir,
    set_aside,
    staged_dir,
    write_text_atomic,
)
from pipeline.core.errors import ModifiedManifestError
from pipeline.core.integrity import TreeCheck, check_tree
from pipeline.core.locks import hold_lock
from pipeline.core.manifest import MANIFEST_NAME, Manifest, StatRecord


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Write folder/manifest.json, sealed (atomically); return what was written."""
    sealed = manifest.sealed()
    write_text_atomic(folder / MANIFEST_NAME, sealed.model_dump_json(indent=2))
    return sealed


def read_manifest(folder: Path) -> Manifest:
    """folder/manifest.json, if readable and as sealed when written; else ModifiedManifestError."""
    path = folder / MANIFEST_NAME
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except (OSError, ValidationError, ValueError) as exc:
        problem = f"{exc.error_count()} errors" if isinstance(exc, ValidationError) else type(exc).__name__
        raise ModifiedManifestError(path, f"unreadable ({problem})") from None
    if not manifest.is_sealed:
        raise ModifiedManifestError(path, "edited since it was written (its seal does not match)")
    return manifest


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest

    @property
    def key(self) -> str:
        return self.manifest.key


class ArtifactStore:
    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.root = work_dir / "store"

    def slot(self, stage: str, variant: tuple[str, ...]) -> Path:
        return self.root.joinpath(stage, *variant)

    def log_path(self, stage: str, variant: tuple[str, ...], key: str) -> Path:
        return self.work_dir.joinpath("logs", stage, *variant, f"{key}.log")

    def get(self, stage: str, variant: tuple[str, ...], key: str) -> Artifact | None:
        """The artifact at key, None if there is none; ModifiedManifestError if its manifest.json was
        edited (or is unreadable) since it was written."""
        path = self.slot(stage, variant) / key
        if not (path / MANIFEST_NAME).is_file():
            return None
        return Artifact(path=path, manifest=read_manifest(path))

    def latest(self, stage: str, variant: tuple[str, ...]) -> Artifact | None:
        """The newest artifact (to say why a stage is stale); None if none, or its manifest is modified."""
        pointer = self.slot(stage, variant) / "LATEST"
        if not pointer.is_file():
            return None
        try:
            return self.get(stage, variant, pointer.read_text().strip())
        except ModifiedManifestError:
            return None

    @staticmethod
    def check(artifact: Artifact) -> TreeCheck:
        """Verify artifact against its manifest: every file present with its bytes, and nothing else."""
        return check_tree(artifact.path, artifact.manifest.files, ignore=frozenset({MANIFEST_NAME}))

    def refresh_stats(self, artifact: Artifact, restat: dict[str, StatRecord]) -> Artifact:
        """Record the new stat of files whose bytes were found unchanged (so they are not hashed again).
        Call with the lock held."""
        if not restat:
            return artifact
        files = [f.model_copy(update={"stat": restat.get(f.path, f.stat)}) for f in artifact.manifest.files]
        manifest = write_manifest(artifact.path, artifact.manifest.model_copy(update={"files": files}))
        (artifact.path / MANIFEST_NAME).chmod(FILE_MODE)
        return Artifact(path=artifact.path, manifest=manifest)

    def set_aside(self, path: Path) -> Path:
        """Move a modified artifact's folder out of the way (kept for inspection); return where it now is."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return set_aside(path, f"modified-{stamp}")

    @contextmanager
    def writer(self, stage: str, variant: tuple[str, ...], key: str) -> Iterator[Path]:
        """Yield a fresh temp dir; on normal exit it must hold manifest.json and is committed, read-only."""
        slot = self.slot(stage, variant)
        with staged_dir(slot, key) as tmp:
            yield tmp
            if not (tmp / MANIFEST_NAME).is_file():
                raise RuntimeError(f"refusing to commit {tmp}: no {MANIFEST_NAME}")
            protect(tmp)
            replace_dir(tmp, slot / key)
            write_text_atomic(slot / "LATEST", key + "\n")

    def recover(self) -> list[str]:
        """Undo what an interrupted run left behind. Call with the lock held."""
        return recover_aside(self.root)

    @contextmanager
    def lock(self, *, wait: bool, on_wait: Callable[[Path], None] | None = None) -> Iterator[None]:
        """Hold the work dir's lock: two runs never interleave their writes."""
        with hold_lock(self.work_dir, wait=wait, on_wait=on_wait):
            yield
