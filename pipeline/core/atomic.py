"""Atomic writes: every file, folder and link appears whole or not at all.

One home for the moves the store, the release and the build links make:
- `write_text_atomic`, `write_bytes_atomic`: a unique temp file in the same folder, fsync, `os.replace`;
- `copy_file_atomic`: the same for a copy of a file (a reader sees the old copy or the new, whole);
- `staged_dir`: a fresh `.tmp-*` folder that is removed unless it was renamed into place;
- `replace_dir`: rename a staged folder over a final name, the old one moved aside first and put
  back should the rename fail (`recover_aside` finishes the job after a kill);
- `swap_symlink`: a new link made under a temp name and renamed over the old one;
- `link_or_copy`: a hard link or a copy, whose bytes are hashed where they lie before they count;
- `protect`: files read-only (0444) and world-readable, folders world-traversable.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pipeline.core.errors import InputError
from pipeline.core.hashing import sha256_and_stat
from pipeline.core.manifest import StatRecord

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
FILE_MODE = 0o444
DIR_MODE = 0o755


def _nonce() -> str:
    return uuid.uuid4().hex[:8]


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A unique temp name beside path for the caller to write; os.replace'd over path on normal exit."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{_nonce()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a unique temp file in the same folder, fsync, then os.replace."""
    _write_atomic(path, text, "w")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """write_text_atomic for bytes."""
    _write_atomic(path, data, "wb")


def _write_atomic(path: Path, data: str | bytes, mode: Literal["w", "wb"]) -> None:
    with _replacing(path) as tmp, open(tmp, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def copy_file_atomic(src: Path, dst: Path) -> None:
    """Copy src over dst via a temp file in dst's folder (fsync, os.replace), keeping src's mtime."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(dst) as tmp:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        st = os.stat(src)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))


@contextmanager
def staged_dir(parent: Path, label: str = "") -> Iterator[Path]:
    """A fresh `.tmp-<label>-<nonce>` folder in parent; whatever is left of it afterwards is removed."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{TMP_PREFIX}{label}{'-' if label else ''}{_nonce()}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(staged: Path, final: Path) -> None:
    """Rename staged to final; an existing final is moved aside first and restored if that fails."""
    if not final.exists():
        os.rename(staged, final)
        return
    trash = final.with_name(f"{TRASH_PREFIX}{final.name}-{_nonce()}")
    os.rename(final, trash)
    try:
        os.rename(staged, final)
    except BaseException:
        os.rename(trash, final)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def set_aside(path: Path, suffix: str) -> Path:
    """Rename path to `<name>.<suffix>` (or a numbered variant when taken) beside it; return the new path."""
    aside = path.with_name(f"{path.name}.{suffix}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.{suffix}-{n}")
    os.rename(path, aside)
    return aside


def recover_aside(root: Path) -> list[str]:
    """Undo what a kill during `replace_dir` or `staged_dir` left under root; what was done, one line each."""
    actions: list[str] = []
    if not root.is_dir():
        return actions
    for path in sorted(root.rglob(f"{TRASH_PREFIX}*")):
        final = path.with_name(path.name[len(TRASH_PREFIX) :].rsplit("-", 1)[0])
        if final.exists():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.rename(path, final)
            actions.append(f"restored {final} after an interrupted replace")
    actions += remove_staged(root, recursive=True)
    return actions


def remove_staged(folder: Path, *, recursive: bool = False) -> list[str]:
    """Remove every `.tmp-*` entry (a staged folder, file or link) in folder (and below, if recursive)."""
    if not folder.is_dir():
        return []
    found = folder.rglob(f"{TMP_PREFIX}*") if recursive else folder.glob(f"{TMP_PREFIX}*")
    actions = []
    for path in sorted(found):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        actions.append(f"removed partial {path}")
    return actions


def swap_symlink(link: Path, target: str) -> None:
    """Point link at target (a path string, relative to link's folder or absolute) in one rename."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == target:
        return
    tmp = link.with_name(f"{TMP_PREFIX}{link.name}-{_nonce()}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


def link_or_copy(src: Path, dst: Path, sha256: str) -> StatRecord:
    """Hard-link src at dst when both are on one filesystem, otherwise copy it; then hash the file now
    at dst and refuse it (removed) unless it has `sha256`. Returns its stat as it was hashed.

    The file at src was verified earlier, by name: it may have been replaced since (a rename leaves
    no trace on the verified inode), so only the bytes placed count, link or copy.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(src, dst)
    actual, st = sha256_and_stat(dst)
    if actual != sha256:
        dst.unlink()
        raise InputError(
            f"placed file has sha256 {actual[:12]}..., expected {sha256[:12]}... (its source changed "
            "since it was verified, or a disk error)",
            path=src,
            hint="`trtllm-pipeline run` sets a modified artifact aside and rebuilds it; then publish again",
        )
    return StatRecord.of(st)


def protect(root: Path) -> None:
    """Every file under root read-only for all (0444), every folder 0755: readable by a non-root server,
    and an in-place write needs a deliberate chmod first (root ignores modes: the manifests catch that)."""
    os.chmod(root, DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, DIR_MODE)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path) and stat.S_IMODE(os.stat(path).st_mode) != FILE_MODE:
                os.chmod(path, FILE_MODE)
