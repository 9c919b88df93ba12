"""Inter-process locks on a folder (the work dir, a publish destination): one writer at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.core.errors import LockBusyError

LOCK_NAME = ".lock"


@contextmanager
def hold_lock(folder: Path, *, wait: bool, on_wait: Callable[[Path], None] | None = None) -> Iterator[None]:
    """Hold `<folder>/.lock` (the folder is created); without wait, a held lock raises LockBusyError."""
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_NAME
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
