"""Publish placement: a release of a 512 MiB engine by hardlink, by copy + sha256, and a no-op republish.

Goals: a hardlinked release costs next to nothing whatever the engine size
(< 0.5 s); a copy is bounded by one read + one write + one hash of the engine;
republishing an unchanged release verifies the current version by one stat
per file (its engine is a hard link of the verified source) (< 0.1 s).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

from pipeline.core import atomic
from pipeline.core.hashing import sha256_file
from pipeline.core.manifest import FileEntry, stat_key
from pipeline.serving.release import publish_release
from pipeline.serving.release_manifest import (
    RELEASE_MANIFEST,
    EngineRef,
    GateRef,
    ModelRef,
    ReleaseManifest,
    ServingRef,
)

ENGINE_BYTES = 512 * 1024 * 1024


def sample_release(files: list[FileEntry]) -> ReleaseManifest:
    """A valid publish-manifest.json listing `files` (the other fields are placeholders)."""
    return ReleaseManifest(
        model=ModelRef(name="bench", source="tiny", repo_id=None, commit=None),
        precision="int8_sq",
        profile="latency",
        engine=EngineRef(target="cpu", sm=None, max_batch_size=1, max_input_len=1, max_seq_len=2, path="."),
        versions={},
        serving=ServingRef(
            serve_with="bench",
            triton_backend="python",
            decoupled=True,
            batching_strategy="inflight_fused_batching",
            kv_cache_free_gpu_mem_fraction=0.9,
            triton_max_batch_size=1,
            gpt_model_path=".",
        ),
        gate=GateRef(ok=True, summary="bench", key="0" * 20),
        files=files,
    )


def _source(root: Path) -> tuple[Path, list[FileEntry]]:
    source = root / "repository"
    engine = source / "tensorrt_llm" / "1" / "engine" / "rank0.engine"
    engine.parent.mkdir(parents=True)
    chunk = os.urandom(8 * 1024 * 1024)
    with open(engine, "wb") as f:
        for _ in range(ENGINE_BYTES // len(chunk)):
            f.write(chunk)
    rel = engine.relative_to(source).as_posix()
    files = [FileEntry(path=rel, sha256=sha256_file(engine), size=engine.stat().st_size)]
    (source / RELEASE_MANIFEST).write_text(sample_release(files).model_dump_json())
    return source, files


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    try:
        source, files = _source(root)
        # The source's verified files by stat, as the executor hands them to the publish stage.
        trusted = {stat_key((source / f.path).stat()): f.sha256 for f in files}
        mib = ENGINE_BYTES / 2**20

        def release(slot: str):
            return publish_release(source, root / slot, files, lock_root=root, trusted=trusted)

        linked_s, first = _timed(lambda: release("linked"))
        noop_s, again = _timed(lambda: release("linked"))

        def cross_device(src, dst):
            raise OSError(errno.EXDEV, "cross-device")

        with mock.patch.object(atomic.os, "link", cross_device):
            copied_s, _ = _timed(lambda: release("copied"))
        print(f"engine: {mib:.0f} MiB")
        print(f"release by hardlink:          {linked_s:6.3f} s  (goal < 0.5 s)  version {first.version}")
        print(f"release by copy + sha256:     {copied_s:6.3f} s  ({mib / copied_s:.0f} MiB/s)")
        print(f"republish, unchanged (no-op): {noop_s:6.3f} s  (goal < 0.1 s)  created={again.created}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
