"""Versioned releases of a model repository at a destination folder.

    <slot>/1/, <slot>/2/ ...   complete repositories, never changed once in place
    <slot>/current -> 2        the newest; point Triton (or a container mount) at it
    <slot>/.tmp-<nonce>/       being written; removed on failure

A version appears by one rename, only once every file is in place and
verified; the previous one stays. Republishing a repository whose release
manifest is byte-identical to the current one's adds nothing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError
from pipeline.manifest import FileEntry
from pipeline.serving.placement import place_file

CURRENT = "current"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Release:
    version: int
    path: Path
    created: bool  # False: the same release was already current


def check_destination(path: Path) -> None:
    """Refuse a destination that is, or lies under, something other than a folder. Writes nothing."""
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            raise InputError(
                "the publish destination is a file, not a folder",
                path=candidate,
                hint="set publish.destination to a folder (it is created if missing)",
            )


def versions(slot: Path) -> list[int]:
    if not slot.is_dir():
        return []
    return sorted(int(p.name) for p in slot.iterdir() if p.name.isdigit() and p.is_dir())


def current_version(slot: Path) -> int | None:
    link = slot / CURRENT
    if link.is_symlink() and os.readlink(link).isdigit() and (slot / os.readlink(link)).is_dir():
        return int(os.readlink(link))
    found = versions(slot)
    return found[-1] if found else None


def publish_release(source: Path, slot: Path, files: list[FileEntry], manifest_name: str) -> Release:
    """Place `files` of `source` (plus its manifest) as the next version of `slot`, unless already current."""
    check_destination(slot)
    manifest = (source / manifest_name).read_bytes()
    current = current_version(slot)
    if current is not None and (slot / str(current) / manifest_name).is_file():
        if (slot / str(current) / manifest_name).read_bytes() == manifest:
            _point_current(slot, current)
            return Release(current, slot / str(current), created=False)
    created = [p for p in (slot, *slot.parents) if not p.exists()]  # deepest first
    slot.mkdir(parents=True, exist_ok=True)
    tmp = slot / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for entry in files:
            place_file(source / entry.path, tmp / entry.path, entry.sha256)
        shutil.copyfile(source / manifest_name, tmp / manifest_name)
        version = _commit(tmp, slot)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)  # a failed first publish leaves no trace at the destination
        raise
    _point_current(slot, version)
    return Release(version, slot / str(version), created=True)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _commit(tmp: Path, slot: Path) -> int:
    """Rename tmp to the next free version number (a concurrent publisher takes the one after)."""
    version = (versions(slot) or [0])[-1] + 1
    while True:
        try:
            os.rename(tmp, slot / str(version))
            return version
        except OSError:
            if not (slot / str(version)).exists():
                raise
            version += 1


def _point_current(slot: Path, version: int) -> None:
    link = slot / CURRENT
    if link.is_symlink() and os.readlink(link) == str(version):
        return
    tmp = slot / f"{TMP_PREFIX}{CURRENT}-{uuid.uuid4().hex[:8]}"
    os.symlink(str(version), tmp)
    try:
        os.replace(tmp, link)
    finally:
        if tmp.is_symlink():
            tmp.unlink()
