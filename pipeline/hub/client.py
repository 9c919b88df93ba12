"""The huggingface_hub boundary: settings read at call time, the two calls made, errors translated.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when it is imported;
this module reads them when a fetch starts and passes them explicitly, so the
environment of the run is what counts. The exception class huggingface_hub
raises comes from the hub's X-Error-Code header, not the status code, and
GatedRepoError subclasses RepositoryNotFoundError: the order of the checks in
`translate` matters. The token is never put in a message or a log line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import FetchError, HubAccessError
from pipeline.hub.listing import HubFile, RepoListing

DEFAULT_ENDPOINT = "https://huggingface.co"
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    offline: bool
    token: str | None = field(default=None, repr=False)  # HF_TOKEN or the `hf auth login` token

    @classmethod
    def from_env(cls) -> HubSettings:
        from huggingface_hub import constants, get_token

        offline_env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
        endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
        return cls(
            endpoint=endpoint.rstrip("/"),
            # constants.HF_HUB_OFFLINE: set at import, huggingface_hub then refuses every request anyway
            offline=offline_env.upper() in TRUE_VALUES or constants.HF_HUB_OFFLINE,
            token=get_token(),
        )

    def model_page(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"


def list_repo(settings: HubSettings, repo_id: str, revision: str) -> RepoListing:
    """One call (`GET /api/models/{repo}/revision/{rev}?blobs=True`): the commit and every file's metadata."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=settings.endpoint, token=settings.token).model_info(
            repo_id, revision=revision, files_metadata=True
        )
    except Exception as exc:
        raise translate(exc, settings, repo_id, revision) from None
    files = tuple(
        HubFile(
            path=s.rfilename,
            size=s.lfs.size if s.lfs else (s.size or 0),
            sha256=s.lfs.sha256 if s.lfs else None,
            blob_id=s.blob_id,
        )
        for s in info.siblings or ()
    )
    assert info.sha is not None, "the hub's model info always carries the commit"
    return RepoListing(repo_id=repo_id, revision=revision, commit=info.sha, files=files)


def download_file(settings: HubSettings, cache_dir: Path, repo_id: str, commit: str, name: str) -> Path:
    """The file's path in the huggingface_hub cache (a symlink into blobs/), downloaded or resumed if needed."""
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            repo_id,
            name,
            revision=commit,
            cache_dir=cache_dir,
            endpoint=settings.endpoint,
            token=settings.token,
            local_files_only=settings.offline,
        )
    )


def blob_path(cache_dir: Path, repo_id: str, file: HubFile) -> Path | None:
    """Where huggingface_hub writes the file's blob (plus `.incomplete` while it downloads)."""
    from huggingface_hub.file_download import repo_folder_name

    if file.etag is None:
        return None
    return cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs" / file.etag


def is_transient(exc: BaseException) -> bool:
    """Worth another try: the next call resumes from the `.incomplete` file."""
    import requests
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, LocalEntryNotFoundError):  # online, it means the HEAD call could not reach the hub
        return True
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return status == 429 or status >= 500
    if isinstance(exc, requests.RequestException):  # dropped connection, timeout, refused
        return True
    # huggingface_hub's size check ("Consistency check failed") is an OSError without an errno;
    # a full disk or a permission problem carries one and will not go away by retrying.
    return type(exc) is OSError and exc.errno is None


def translate(
    exc: BaseException, settings: HubSettings, repo_id: str, revision: str, file: str | None = None
) -> FetchError:
    """One line saying what went wrong and what to do. Unknown exceptions are re-raised (a bug)."""
    import requests
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = settings.model_page(repo_id)
    login = "set HF_TOKEN (or run `hf auth login`)"
    where = f"{file}: " if file else ""
    if isinstance(exc, GatedRepoError):  # before RepositoryNotFoundError, its base class
        who = "the account of this token has" if settings.token else "no token was given, so you have"
        return HubAccessError(
            repo_id,
            _status(exc),
            f"{repo_id} is gated and {who} no access: accept the license on {page}"
            + (" with that account" if settings.token else f", then {login}"),
        )
    if isinstance(exc, RepositoryNotFoundError):
        if settings.token:
            return HubAccessError(
                repo_id,
                _status(exc),
                f"{repo_id} was not found, or this token cannot see it ({_status(exc)}): "
                "check model.repo_id and the token's access",
            )
        return HubAccessError(
            repo_id,
            _status(exc),
            f"{repo_id} was not found ({_status(exc)}): check model.repo_id; "
            f"if the repo is private or gated, {login}",
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubAccessError(
            repo_id,
            _status(exc),
            f"{repo_id} has no revision '{revision}' (404): check model.revision (a branch, tag or 40-hex commit)",
        )
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)) and settings.offline:
        return FetchError(
            f"{where}{repo_id}@{revision} is not in the download cache and HF_HUB_OFFLINE is set: "
            "run fetch once online, or set model.source = 'local'",
            file=file,
        )
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return FetchError(
            f"{where}{repo_id}@{revision} has no such file (404): rerun to list the repo again", file=file
        )
    if isinstance(exc, HfHubHTTPError) and _status(exc) in (401, 403):
        if _status(exc) == 401:
            return HubAccessError(
                repo_id,
                401,
                f"the hub rejected the token (401): {login} with a valid token from "
                f"{settings.endpoint}/settings/tokens",
            )
        return HubAccessError(
            repo_id,
            403,
            f"this token may not read {repo_id} (403): give it read access to the repo "
            "(fine-grained tokens list their repos) or use another token",
        )
    if isinstance(exc, HfHubHTTPError):
        return FetchError(f"{where}the hub answered {_status(exc)} for {repo_id}: retry later", file=file)
    if (
        isinstance(exc, (requests.ConnectionError, requests.Timeout, LocalEntryNotFoundError))
        and file is None
    ):
        return FetchError(
            f"cannot reach the hub at {settings.endpoint}: check the network, the proxy or HF_ENDPOINT; "
            "to use files fetched before, set HF_HUB_OFFLINE=1"
        )
    if is_transient(exc):
        return FetchError(
            f"{where}the download kept failing ({type(exc).__name__}): check the network and rerun; "
            "finished files are kept and this one resumes where it stopped",
            file=file,
        )
    if isinstance(exc, OSError) and exc.errno is not None:  # a full disk, a read-only or missing cache dir
        return FetchError(
            f"{where}cannot write the download cache: {exc.strerror} ({exc.filename})", file=file
        )
    raise exc


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return response.status_code if response is not None else None
