"""Is a folder what its manifest says? Stat every file, hash only those whose stat changed.

`judge` decides from a file's stat alone (pure): whole-file hashing happens only when it says "hash",
so checking an unchanged multi-GB artifact costs one stat per file. A file whose bytes still match
after its stat changed (a `touch`) is reported in `restat`, so its record can be refreshed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.core.hashing import sha256_file
from pipeline.core.manifest import FileEntry, StatKey, StatRecord, StoredFile, stat_key

Verdict = Literal["ok", "missing", "modified", "hash"]


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the checked folder
    what: Literal["missing", "modified", "not in the manifest"]

    def __str__(self) -> str:
        return f"{self.what}: {self.path}"


@dataclass
class TreeCheck:
    problems: list[Problem] = field(default_factory=list)
    trusted: dict[StatKey, str] = field(default_factory=dict)  # each matching file's sha256, by stat key
    restat: dict[str, StatRecord] = field(default_factory=dict)  # matched by hash after a stat change
    stats: dict[str, StatRecord] = field(default_factory=dict)  # every matching file's stat, as judged

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """`modified: engine/rank0.safetensors` (+ how many more)."""
        if not self.problems:
            return ""
        more = len(self.problems) - 1
        return str(self.problems[0]) + (f" (and {more} more)" if more else "")


def judge(
    entry: FileEntry, recorded: StatRecord | None, st: os.stat_result | None, trusted: Mapping[StatKey, str]
) -> Verdict:
    """What a file's stat says about it, before any hashing."""
    if st is None or not stat.S_ISREG(st.st_mode):
        return "missing"
    if st.st_size != entry.size:
        return "modified"
    if recorded is not None and StatRecord.of(st) == recorded:
        return "ok"
    if trusted.get(stat_key(st)) == entry.sha256:
        return "ok"  # the same inode as a file verified already (a hard link)
    return "hash"


def check_tree(
    root: Path,
    entries: Iterable[FileEntry],
    *,
    trusted: Mapping[StatKey, str] | None = None,
    ignore: frozenset[str] = frozenset(),
) -> TreeCheck:
    """Check every entry under root, and that root holds no file the entries do not list (but `ignore`)."""
    trusted = trusted or {}
    result = TreeCheck()
    listed = set()
    for entry in entries:
        listed.add(entry.path)
        path = root / entry.path
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        recorded = entry.stat if isinstance(entry, StoredFile) else None
        verdict = judge(entry, recorded, st, trusted)
        if verdict == "hash":
            verdict = "ok" if sha256_file(path) == entry.sha256 else "modified"
            if verdict == "ok":
                assert st is not None
                result.restat[entry.path] = StatRecord.of(st)
        if verdict == "ok":
            assert st is not None
            result.trusted[stat_key(st)] = entry.sha256
            result.stats[entry.path] = StatRecord.of(st)
        else:
            result.problems.append(Problem(entry.path, verdict))  # type: ignore[arg-type]
    for rel in sorted(unlisted_files(root, listed | ignore)):
        result.problems.append(Problem(rel, "not in the manifest"))
    return result


def unlisted_files(root: Path, listed: set[str]) -> list[str]:
    """Files (and links) under root whose relative path is not in listed."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            rel = (rel_folder / name).as_posix()
            if rel not in listed:
                found.append(rel)
    return found
