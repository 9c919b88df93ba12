"""Publish placement: a release of a 512 MiB engine by hardlink, by copy + sha256, and a no-op republish.

Goals: a hardlinked release costs next to nothing whatever the engine size
(< 0.5 s); a copy is bounded by one read + one write + one hash of the engine;
republishing an unchanged release reads only its manifest (< 0.1 s).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

from pipeline.hashing import sha256_file
from pipeline.manifest import FileEntry
from pipeline.serving import placement
from pipeline.serving.release import publish_release

ENGINE_BYTES = 512 * 1024 * 1024
MANIFEST = "publish-manifest.json"


def _source(root: Path) -> tuple[Path, list[FileEntry]]:
    source = root / "repository"
    engine = source / "tensorrt_llm" / "1" / "engine" / "rank0.engine"
    engine.parent.mkdir(parents=True)
    chunk = os.urandom(8 * 1024 * 1024)
    with open(engine, "wb") as f:
        for _ in range(ENGINE_BYTES // len(chunk)):
            f.write(chunk)
    (source / MANIFEST).write_text('{"bench": true}\n')
    rel = engine.relative_to(source).as_posix()
    return source, [FileEntry(path=rel, sha256=sha256_file(engine), size=engine.stat().st_size)]


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    try:
        source, files = _source(root)
        mib = ENGINE_BYTES / 2**20
        linked_s, first = _timed(lambda: publish_release(source, root / "linked", files, MANIFEST))
        noop_s, again = _timed(lambda: publish_release(source, root / "linked", files, MANIFEST))

        def cross_device(src, dst):
            raise OSError(errno.EXDEV, "cross-device")

        with mock.patch.object(placement.os, "link", cross_device):
            copied_s, _ = _timed(lambda: publish_release(source, root / "copied", files, MANIFEST))
        print(f"engine: {mib:.0f} MiB")
        print(f"release by hardlink:          {linked_s:6.3f} s  (goal < 0.5 s)  version {first.version}")
        print(f"release by copy + sha256:     {copied_s:6.3f} s  ({mib / copied_s:.0f} MiB/s)")
        print(f"republish, unchanged (no-op): {noop_s:6.3f} s  (goal < 0.1 s)  created={again.created}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
