"""What the hub says a revision holds: the commit and each file's size and digests.

The listing fetch verified against is kept next to the download cache, so an
offline run (HF_HUB_OFFLINE) verifies the cached files against the same
metadata and writes the same record as the online run did.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from pipeline.core.atomic import write_text_atomic


class HubFile(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str  # inside the repo, POSIX separators
    size: int
    sha256: str | None = None  # LFS files: the content's sha256
    blob_id: str | None = None  # the git object id (sha1 of "blob <size>\0" + content)

    @property
    def etag(self) -> str | None:
        """The name huggingface_hub gives the file's blob in its cache (the hub's ETag)."""
        return self.sha256 or self.blob_id


class RepoListing(BaseModel):
    model_config = ConfigDict(frozen=True)
    repo_id: str
    revision: str  # as asked for (a branch, tag or commit)
    commit: str  # what it resolved to
    files: tuple[HubFile, ...]

    def file(self, path: str) -> HubFile:
        return next(f for f in self.files if f.path == path)


class ListingCache:
    """One JSON listing per (repo, revision) asked for; a branch's file says the commit it last resolved to."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, repo_id: str, revision: str) -> Path:
        return self.root / repo_id.replace("/", "--") / f"{quote(revision, safe='')}.json"

    def save(self, listing: RepoListing) -> None:
        path = self.path(listing.repo_id, listing.revision)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, listing.model_dump_json(indent=1))

    def load(self, repo_id: str, revision: str) -> RepoListing | None:
        path = self.path(repo_id, revision)
        if not path.is_file():
            return None
        return RepoListing.model_validate_json(path.read_text())
