"""Fetch a model revision from the Hugging Face hub: resolve, select, download, verify.

    fetch_repo(repo_id, revision, patterns=..., allow_pickle=False, hub_dir=..., reporter=..., log=...)

`hub_dir` holds the huggingface_hub download cache (`hf-cache/`) and the
listings fetch verified against (`listings/`). huggingface_hub is imported
only when a fetch runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import DiskSpaceError, FetchError
from pipeline.core.reporter import Reporter
from pipeline.hub.client import HubSettings, list_repo
from pipeline.hub.download import (
    RETRY_DELAYS_S,
    Downloader,
    FreeBytes,
    VerifiedFile,
    bytes_missing,
    check_disk_space,
    free_bytes,
)
from pipeline.hub.listing import ListingCache, RepoListing
from pipeline.hub.selection import SAFETENSORS_INDEX, select_model_files

__all__ = ["FetchedRepo", "VerifiedFile", "fetch_repo"]


@dataclass(frozen=True)
class FetchedRepo:
    listing: RepoListing
    files: dict[str, VerifiedFile]  # the selected files, by path in the repo
    offline: bool


def fetch_repo(
    repo_id: str,
    revision: str,
    *,
    patterns: Sequence[str],
    allow_pickle: bool,
    hub_dir: Path,
    reporter: Reporter,
    log: logging.Logger,
    free: FreeBytes = free_bytes,
    retry_delays: Sequence[float] = RETRY_DELAYS_S,
) -> FetchedRepo:
    settings = HubSettings.from_env()
    log.info(
        "hub %s, offline %s, token %s",
        settings.endpoint,
        settings.offline,
        "set" if settings.token else "none",
    )
    with _library_log_into(log):
        cache_dir = hub_dir / "hf-cache"
        listing = _listing(settings, ListingCache(hub_dir / "listings"), repo_id, revision)
        log.info("%s@%s is commit %s (%d files)", repo_id, revision, listing.commit, len(listing.files))
        downloader = Downloader(settings, cache_dir, listing, log=log, retry_delays=retry_delays)
        fetched: dict[str, VerifiedFile] = {}

        def read_index() -> str:  # a few KB, fetched first: it decides which shards are needed
            fetched.update(downloader.fetch([listing.file(SAFETENSORS_INDEX)], on_bytes=lambda n: None))
            return fetched[SAFETENSORS_INDEX].path.read_text()

        selected = select_model_files(
            [f.path for f in listing.files],
            patterns=patterns,
            allow_pickle=allow_pickle,
            source=f"{repo_id}@{listing.commit[:12]}",
            read_index=read_index,
        )
        files = [listing.file(name) for name in selected if name not in fetched]
        missing = bytes_missing(cache_dir, repo_id, files)
        check_disk_space(cache_dir, missing, free)
        try:
            with reporter.progress(f"fetch {repo_id}", sum(f.size for f in files), unit="B") as advance:
                fetched |= downloader.fetch(files, advance)
        except DiskSpaceError as exc:  # something else filled the disk since the check
            raise DiskSpaceError(exc.path, free=exc.free, needed=missing) from None
        return FetchedRepo(listing, {name: fetched[name] for name in selected}, settings.offline)


@contextmanager
def _library_log_into(log: logging.Logger) -> Iterator[None]:
    """huggingface_hub's warnings (each retry, each resume) go to the stage log, not the terminal."""
    library = logging.getLogger("huggingface_hub")
    saved = library.handlers[:]
    library.handlers = list(log.handlers)
    try:
        yield
    finally:
        library.handlers = saved


def _listing(settings: HubSettings, cache: ListingCache, repo_id: str, revision: str) -> RepoListing:
    if settings.offline:
        listing = cache.load(repo_id, revision)
        if listing is None:
            raise FetchError(
                f"{repo_id}@{revision}: HF_HUB_OFFLINE is set and no earlier fetch of it is cached in "
                f"{cache.root.parent}: run fetch once online, or set model.source = 'local'"
            )
        return listing
    listing = list_repo(settings, repo_id, revision)
    cache.save(listing)
    return listing
