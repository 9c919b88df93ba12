"""Download selected files in parallel, resume on failure, verify every byte.

huggingface_hub checks sizes, never content, so every file is hashed and
compared with the hub's metadata: sha256 for LFS files, the git blob id for
the others. The hash of an LFS file is taken while huggingface_hub writes it
(following its `.incomplete` blob from the page cache), so verifying overlaps
the download instead of following it. Anything unusual (a restarted download,
a blob not named by its sha256, a writer that does not append in order) ends
in a digest that does not match, and a mismatch is always confirmed by hashing
the finished file before the file is condemned. A dropped connection leaves the
`.incomplete` blob in place and the next call resumes it with a Range request:
that is the retry loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipeline.core.errors import ChecksumError, DiskSpaceError
from pipeline.hub import client
from pipeline.hub.client import HubSettings
from pipeline.hub.listing import HubFile, RepoListing

CHUNK = 8 * 1024 * 1024
FOLLOW_POLL_S = 0.005
WORKERS = 8  # as huggingface_hub's snapshot_download
RETRY_DELAYS_S = (0.0, 2.0, 10.0)  # waits before the 2nd, 3rd, 4th attempt; resuming is cheap
FreeBytes = Callable[[Path], int]
T = TypeVar("T")


@dataclass(frozen=True)
class VerifiedFile:
    path: Path  # the file in the download cache (a symlink into blobs/)
    size: int
    sha256: str


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def bytes_missing(cache_dir: Path, repo_id: str, files: Sequence[HubFile]) -> int:
    """What is left to download: complete blobs count for nothing, `.incomplete` ones for their remainder."""
    missing = 0
    for file in files:
        blob = client.blob_path(cache_dir, repo_id, file)
        if blob is not None and blob.is_file():
            continue
        partial = Path(f"{blob}.incomplete") if blob is not None else None
        missing += file.size - (partial.stat().st_size if partial is not None and partial.is_file() else 0)
    return missing


def check_disk_space(path: Path, needed: int, free: FreeBytes = free_bytes) -> None:
    path.mkdir(parents=True, exist_ok=True)
    available = free(path)
    if needed > available:
        raise DiskSpaceError(path, needed=needed, free=available)


class _GrowingFileHasher:
    """Hashes a blob while huggingface_hub appends to it, across retries; reports bytes as they land."""

    def __init__(self, blob: Path, size: int, on_bytes: Callable[[int], None]) -> None:
        self._candidates = (Path(f"{blob}.incomplete"), blob)
        self._size = size
        self._on_bytes = on_bytes
        self._done = threading.Event()
        self.reported = 0
        self._digest: str | None = None
        self._inode: int | None = None
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """The download returned or gave up: read what is left, then stop."""
        self._done.set()
        self._thread.join()

    def digest_of(self, path: Path) -> str | None:
        """The sha256, if what was hashed is exactly the file now at `path`."""
        st = path.stat()
        same = self._digest is not None and st.st_ino == self._inode and st.st_size == self._size
        return self._digest if same else None

    def _open(self):
        for candidate in self._candidates:
            try:
                return open(candidate, "rb", buffering=0)
            except FileNotFoundError:
                continue
        return None

    def _follow(self) -> None:
        f = self._open()
        while f is None:
            if self._done.is_set():
                return
            time.sleep(FOLLOW_POLL_S)
            f = self._open()
        buffer = memoryview(bytearray(CHUNK))  # reused: no fresh pages to fault in for every read
        with f:
            digest, pos, last_look = hashlib.sha256(), 0, False
            while pos < self._size:
                n = f.readinto(buffer[: min(CHUNK, self._size - pos)])
                if n:
                    digest.update(buffer[:n])
                    pos += n
                    self.reported += n
                    self._on_bytes(n)
                elif os.fstat(f.fileno()).st_size < pos:
                    return  # truncated: the download started over; the finished file gets hashed instead
                elif self._done.is_set():
                    if last_look:
                        return
                    last_look = True  # the writer has closed the file: one more read gets its last bytes
                else:
                    time.sleep(FOLLOW_POLL_S)
            self._digest, self._inode = digest.hexdigest(), os.fstat(f.fileno()).st_ino


def _digests(path: Path, size: int) -> tuple[str, str]:
    """sha256 and git blob id of a file, in one pass."""
    sha256, blob_id = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    buffer = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            sha256.update(buffer[:n])
            blob_id.update(buffer[:n])
    return sha256.hexdigest(), blob_id.hexdigest()


def _discard(path: Path) -> None:
    """Remove a bad file from the cache (blob and snapshot link) so the next run downloads it again."""
    path.resolve().unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def verify(file: HubFile, path: Path, sha256: str | None = None) -> str:
    """Compare a downloaded file with the hub's metadata; delete it and raise on a mismatch. Returns its sha256."""
    size = path.stat().st_size
    if size != file.size:
        _discard(path)
        raise ChecksumError(file.path, "size", str(file.size), str(size))
    blob_id = None
    if sha256 is None or (file.sha256 is not None and sha256 != file.sha256):
        sha256, blob_id = _digests(path, size)  # no digest taken while downloading, or confirm a mismatch
    if file.sha256 is not None and sha256 != file.sha256:
        _discard(path)
        raise ChecksumError(file.path, "sha256", file.sha256, sha256)
    if file.sha256 is None and file.blob_id is not None:
        blob_id = blob_id or _digests(path, size)[1]
        if blob_id != file.blob_id:
            _discard(path)
            raise ChecksumError(file.path, "git blob id", file.blob_id, blob_id)
    return sha256


def _run_parallel(jobs: Sequence[Callable[[], T]], workers: int, tick: Callable[[], None]) -> list[T]:
    """Run jobs on daemon threads, calling tick() from this thread meanwhile. After a failure no new job
    starts; the first error is raised once the running ones end. Daemon threads let Ctrl-C end the
    process at once: the interrupted files resume next time."""
    results: list[T | None] = [None] * len(jobs)
    errors: list[BaseException] = []
    queue = iter(enumerate(jobs))
    lock = threading.Lock()
    all_done = threading.Event()
    running = min(workers, len(jobs))

    def worker() -> None:
        nonlocal running
        while True:
            with lock:
                item = None if errors else next(queue, None)
                if item is None:
                    running -= 1
                    if running == 0:
                        all_done.set()
                    return
            index, job = item
            try:
                results[index] = job()
            except BaseException as exc:  # handed to the calling thread
                with lock:
                    errors.append(exc)

    for _ in range(running):
        threading.Thread(target=worker, daemon=True).start()
    while running and not all_done.wait(0.1):
        tick()
    tick()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


class Downloader:
    """Downloads and verifies files of one listing into the huggingface_hub cache at `cache_dir`."""

    def __init__(
        self,
        settings: HubSettings,
        cache_dir: Path,
        listing: RepoListing,
        *,
        log: logging.Logger,
        workers: int = WORKERS,
        retry_delays: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        self.settings = settings
        self.cache_dir = cache_dir
        self.listing = listing
        self.log = log
        self.workers = workers
        self.retry_delays = tuple(retry_delays)
        self._lock = threading.Lock()
        self._landed = 0  # bytes on disk not yet passed to on_bytes

    def fetch(self, files: Sequence[HubFile], on_bytes: Callable[[int], None]) -> dict[str, VerifiedFile]:
        def tick() -> None:
            with self._lock:
                landed, self._landed = self._landed, 0
            if landed:
                on_bytes(landed)

        jobs = [lambda f=f: self._fetch_one(f) for f in files]
        return {f.path: v for f, v in zip(files, _run_parallel(jobs, self.workers, tick), strict=True)}

    def _landed_bytes(self, n: int) -> None:
        with self._lock:
            self._landed += n

    def _fetch_one(self, file: HubFile) -> VerifiedFile:
        blob = client.blob_path(self.cache_dir, self.listing.repo_id, file)
        hasher = (
            _GrowingFileHasher(blob, file.size, self._landed_bytes)
            if blob is not None and file.sha256 is not None
            else None
        )
        try:
            path = self._download_with_retries(file)
        finally:
            if hasher is not None:
                hasher.finish()
        self._landed_bytes(file.size - (hasher.reported if hasher is not None else 0))
        sha256 = verify(file, path, hasher.digest_of(path) if hasher is not None else None)
        self.log.info("%s: %d bytes, sha256 %s verified", file.path, file.size, sha256)
        return VerifiedFile(path, file.size, sha256)

    def _download_with_retries(self, file: HubFile) -> Path:
        repo_id, commit = self.listing.repo_id, self.listing.commit
        attempt = 0
        while True:
            attempt += 1
            try:
                return client.download_file(self.settings, self.cache_dir, repo_id, commit, file.path)
            except Exception as exc:
                if self.settings.offline or attempt > len(self.retry_delays) or not client.is_transient(exc):
                    raise client.translate(
                        exc, self.settings, repo_id, commit, file.path, cache_dir=self.cache_dir
                    ) from None
                delay = self.retry_delays[attempt - 1]
                self.log.warning(
                    "%s: attempt %d failed (%s); resuming in %.0f s",
                    file.path,
                    attempt,
                    type(exc).__name__,
                    delay,
                )
                time.sleep(delay)
