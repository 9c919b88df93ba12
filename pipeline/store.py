"""The artifact store: one directory per (stage, variant, key), complete or absent.

Layout under the work dir:

    store/<stage>/<variant...>/<key>/manifest.json   a complete artifact
    store/<stage>/<variant...>/LATEST                 key of the newest one (to say why a stage is stale)
    store/<stage>/<variant...>/.tmp-<key>-<nonce>/    being written; never read
    logs/<stage>/<variant...>/<key>.log               the stage's log, kept on failure too

A stage writes into a fresh `.tmp-*` directory; the manifest is written last and
the directory is renamed into place, so a final name always holds a whole
artifact. Replacing an artifact (--force) moves the old one aside first and
restores it if the process dies before the new one is in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from pydantic import ValidationError

from pipeline.errors import InputError, LockBusyError
from pipeline.manifest import MANIFEST_NAME, Manifest

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest

    @property
    def key(self) -> str:
        return self.manifest.key


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a unique temp file in the same folder, fsync, then os.replace."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ArtifactStore:
    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.root = work_dir / "store"

    def slot(self, stage: str, variant: tuple[str, ...]) -> Path:
        return self.root.joinpath(stage, *variant)

    def log_path(self, stage: str, variant: tuple[str, ...], key: str) -> Path:
        return self.work_dir.joinpath("logs", stage, *variant, f"{key}.log")

    def get(self, stage: str, variant: tuple[str, ...], key: str) -> Artifact | None:
        path = self.slot(stage, variant) / key
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            return None
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_text())
        except ValidationError as exc:
            raise InputError(
                f"unreadable manifest ({exc.error_count()} errors)",
                path=manifest_path,
                hint="delete that artifact directory and rerun",
            ) from None
        return Artifact(path=path, manifest=manifest)

    def latest(self, stage: str, variant: tuple[str, ...]) -> Artifact | None:
        pointer = self.slot(stage, variant) / "LATEST"
        if not pointer.is_file():
            return None
        return self.get(stage, variant, pointer.read_text().strip())

    @contextmanager
    def writer(self, stage: str, variant: tuple[str, ...], key: str) -> Iterator[Path]:
        """Yield a fresh temp dir; on normal exit it must hold manifest.json and is committed."""
        slot = self.slot(stage, variant)
        slot.mkdir(parents=True, exist_ok=True)
        tmp = slot / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            if not (tmp / MANIFEST_NAME).is_file():
                raise RuntimeError(f"refusing to commit {tmp}: no {MANIFEST_NAME}")
            self._commit(tmp, slot / key)
            write_text_atomic(slot / "LATEST", key + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _commit(tmp: Path, final: Path) -> None:
        if not final.exists():
            os.rename(tmp, final)
            return
        trash = final.with_name(f"{TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(trash, final)
            raise
        shutil.rmtree(trash, ignore_errors=True)

    def recover(self) -> list[str]:
        """Undo what an interrupted run left behind. Call with the lock held."""
        actions = []
        if not self.root.is_dir():
            return actions
        for path in sorted(self.root.rglob(f"{TRASH_PREFIX}*")):
            key = path.name[len(TRASH_PREFIX) :].rsplit("-", 1)[0]
            final = path.with_name(key)
            if final.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, final)
                actions.append(f"restored {final} after an interrupted replace")
        for path in sorted(self.root.rglob(f"{TMP_PREFIX}*")):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            actions.append(f"removed partial {path}")
        return actions

    @contextmanager
    def lock(self, *, wait: bool, on_wait: Callable[[Path], None] | None = None) -> Iterator[None]:
        """Hold the work dir's lock: two runs never interleave their writes."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.work_dir / ".lock"
        lock = FileLock(lock_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                raise LockBusyError(lock_path) from None
            if on_wait:
                on_wait(lock_path)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()
