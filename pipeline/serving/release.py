"""Versioned releases of a model repository at a destination folder.

    <destination>/.lock        held while publishing: one publisher at a time, whatever its work dir
    <slot>/1/, <slot>/2/ ...   complete repositories, read-only, never changed once in place
    <slot>/current -> 2        the newest; point Triton (or a container mount) at it
    <slot>/.tmp-<nonce>/       being written; removed on failure, and by the next publish after a kill

A version appears by one rename, only once every file is in place and
verified; the previous one stays. Republishing a repository whose release
manifest is byte-identical to the current one's adds nothing, provided the
current version still verifies file by file against its publish-manifest.json:
a tampered version is reported and a fresh one published.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from pipeline.core.atomic import link_or_copy, protect, remove_staged, staged_dir, swap_symlink
from pipeline.core.errors import DiskSpaceError, InputError
from pipeline.core.integrity import Problem, TreeCheck, check_tree
from pipeline.core.locks import hold_lock
from pipeline.core.manifest import FileEntry, StatKey, StatRecord, StoredFile
from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest

CURRENT = "current"


@dataclass(frozen=True)
class Release:
    version: int
    path: Path
    created: bool  # False: the same release was already current (and intact)
    stats: dict[str, StatRecord]  # each file's stat once verified: later checks need no hashing
    tampered: tuple[str, ...] = ()  # what was wrong with the version that was current, if anything


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


def check_current(slot: Path, variant: tuple[str, ...]) -> str | None:
    """What is wrong with slot's `current`, or None: it must name a version folder of slot (a number)
    whose publish-manifest.json names this variant, (model, backend, precision, profile). A link to another
    variant's version, or to a copy of one, would serve that engine under this variant's name."""
    link = slot / CURRENT
    if not link.is_symlink():
        return f"{CURRENT} is not a link to a version" if os.path.lexists(link) else None
    target = os.readlink(link)
    if not target.isdigit() or not (slot / target).is_dir():
        return f"{CURRENT} points to {target}, not a version folder of this variant"
    return check_variant(slot / target, variant)


def check_variant(version_dir: Path, variant: tuple[str, ...]) -> str | None:
    """None if the version's publish-manifest.json names `variant` (or is unreadable: check_version
    reports that), else what it names instead."""
    try:
        manifest = ReleaseManifest.model_validate_json((version_dir / RELEASE_MANIFEST).read_text())
    except (OSError, ValidationError, ValueError):
        return None
    if manifest.variant == variant:
        return None
    named, wanted = "/".join(manifest.variant), "/".join(variant)
    return f"{RELEASE_MANIFEST} of version {version_dir.name} is for {named}, not {wanted}"


def check_version(
    version_dir: Path,
    trusted: Mapping[StatKey, str] | None = None,
    stats: Mapping[str, StatRecord] | None = None,
) -> TreeCheck:
    """A published version against its publish-manifest.json: every file, its bytes, nothing else
    (a `__pycache__` a server wrote counts). `trusted`: verified files by stat, e.g. the store's;
    `stats`: each file's stat when it was last verified (Release.stats). Either spares a hash."""
    try:
        manifest = ReleaseManifest.model_validate_json((version_dir / RELEASE_MANIFEST).read_text())
    except FileNotFoundError:
        return TreeCheck(problems=[Problem(RELEASE_MANIFEST, "missing")])
    except (OSError, ValidationError, ValueError):
        return TreeCheck(problems=[Problem(RELEASE_MANIFEST, "modified")])
    stats = stats or {}
    entries = [StoredFile(**f.model_dump(), stat=stats.get(f.path)) for f in manifest.files]
    return check_tree(version_dir, entries, trusted=trusted, ignore=frozenset({RELEASE_MANIFEST}))


def publish_release(
    source: Path,
    slot: Path,
    files: list[FileEntry],
    *,
    lock_root: Path,
    trusted: Mapping[StatKey, str] | None = None,
    on_wait: Callable[[Path], None] | None = None,
) -> Release:
    """Place `files` of `source` (plus its publish-manifest.json) as the next version of `slot`, unless
    the current version is the same release and intact. Holds `lock_root`'s lock throughout.

    Each file is hashed as it lies in the staged version and refused unless it has the sha256 `files`
    gives (which the caller took from the gated artifacts' manifests); the staged tree is checked by
    stat once more just before the rename, so a file changed after it was hashed is refused too."""
    check_destination(slot)
    manifest = (source / RELEASE_MANIFEST).read_bytes()
    created = [p for p in (slot, *slot.parents) if not p.exists()]  # deepest first
    with hold_lock(lock_root, wait=True, on_wait=on_wait):
        remove_staged(slot)  # what a publish killed mid-way left (we hold the lock: nobody writes there)
        tampered: tuple[str, ...] = ()
        current = current_version(slot)
        if current is not None:
            check = check_version(slot / str(current), trusted)
            tampered = tuple(str(p) for p in check.problems)
            if check.ok and (slot / str(current) / RELEASE_MANIFEST).read_bytes() == manifest:
                swap_symlink(slot / CURRENT, str(current))
                return Release(current, slot / str(current), created=False, stats=check.stats)
        try:
            with staged_dir(slot) as tmp:
                try:
                    stats = {e.path: link_or_copy(source / e.path, tmp / e.path, e.sha256) for e in files}
                    (tmp / RELEASE_MANIFEST).write_bytes(manifest)  # the bytes compared, not a re-read
                except OSError as exc:
                    full = _destination_full(exc, slot, tmp)
                    if full is None:
                        raise
                    raise full from exc
                protect(tmp)
                staged = check_tree(
                    tmp,
                    [StoredFile(**e.model_dump(), stat=stats[e.path]) for e in files],
                    ignore=frozenset({RELEASE_MANIFEST}),
                )
                if not staged.ok:
                    raise InputError(
                        f"a file changed while it was being published ({staged.summary()}); nothing released",
                        path=source,
                        hint="`trtllm-pipeline run` sets a modified artifact aside and rebuilds it",
                    )
                version = _commit(tmp, slot)
        except BaseException:
            _remove_empty(created)  # a failed first publish leaves only the destination's lock
            raise
        swap_symlink(slot / CURRENT, str(version))
    return Release(version, slot / str(version), created=True, stats=stats, tampered=tampered)


def _destination_full(exc: OSError, slot: Path, tmp: Path) -> DiskSpaceError | None:
    """A full destination, named as such: the version is staged beside its final name (on the
    destination's filesystem, so that the rename that releases it is atomic), and it is that disk
    that is full, whatever the work dir's has free."""
    if DiskSpaceError.from_error(exc) is None:
        return None
    written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file() and p.stat().st_nlink == 1)
    return DiskSpaceError(
        slot,
        free=shutil.disk_usage(slot).free,
        written=written,
        hint="free space on the publish destination's disk, or set publish.destination to a larger one",
    )


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _commit(tmp: Path, slot: Path) -> int:
    """Rename tmp to the next free version number (one made meanwhile, lock or not, is skipped)."""
    version = (versions(slot) or [0])[-1] + 1
    while True:
        try:
            os.rename(tmp, slot / str(version))
            return version
        except OSError:
            if not (slot / str(version)).exists():
                raise
            version += 1


def stale_versions(slot: Path, keep: int) -> list[int]:
    """The versions of slot that `prune --keep keep` removes: all but the newest `keep`, never the one
    `current` points to (which may be older, after a rollback by hand)."""
    current = current_version(slot)
    return [v for v in versions(slot)[: -keep or None] if v != current]


def remove_version(slot: Path, version: int) -> None:
    """Remove one version in one rename (to a staged name, which the next publish or prune clears if
    this process dies before the delete ends): no half-deleted numbered version is ever seen."""
    with staged_dir(slot, label=f"prune-{version}") as tmp:
        os.rename(slot / str(version), tmp / str(version))
