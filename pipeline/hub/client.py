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

from pydantic import ValidationError

from pipeline.core.errors import DiskSpaceError, FetchError, HubAccessError, HubListingError, InputError
from pipeline.hub.listing import HubFile, RepoListing
from pipeline.hub.selection import check_repo_path

DEFAULT_ENDPOINT = "https://huggingface.co"
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
# huggingface_hub's own variables and defaults (seconds): the metadata calls (the listing, each file's
# HEAD), and each read of a file's body. It retries a timed-out or 5xx call 5 times (waits 1+2+4+8+8 s),
# so a hub that stops answering fails a file after about 6 x the timeout + 23 s.
METADATA_TIMEOUT_ENV, DOWNLOAD_TIMEOUT_ENV = "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0
ENDPOINT_ENV, OFFLINE_ENVS = "HF_ENDPOINT", ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# What from_env reads but the token: what another process (a Ray worker) must see to reach the same hub.
SETTINGS_ENV = (ENDPOINT_ENV, *OFFLINE_ENVS, METADATA_TIMEOUT_ENV, DOWNLOAD_TIMEOUT_ENV)


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    offline: bool
    token: str | None = field(default=None, repr=False)  # HF_TOKEN or the `hf auth login` token
    metadata_timeout_s: float = DEFAULT_TIMEOUT_S
    download_timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls) -> HubSettings:
        from huggingface_hub import constants, get_token

        offline_env = next((v for v in map(os.environ.get, OFFLINE_ENVS) if v), "")
        endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
        return cls(
            endpoint=endpoint.rstrip("/"),
            # constants.HF_HUB_OFFLINE: set at import, huggingface_hub then refuses every request anyway
            offline=offline_env.upper() in TRUE_VALUES or constants.HF_HUB_OFFLINE,
            token=get_token(),
            metadata_timeout_s=_seconds(METADATA_TIMEOUT_ENV),
            download_timeout_s=_seconds(DOWNLOAD_TIMEOUT_ENV),
        )

    def model_page(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"


def _seconds(name: str) -> float:
    value = os.environ.get(name)
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise InputError(f"{name}={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise InputError(f"{name}={value!r} must be more than 0 seconds")
    return seconds


def list_repo(settings: HubSettings, repo_id: str, revision: str) -> RepoListing:
    """One call (`GET /api/models/{repo}/revision/{rev}?blobs=True`): the commit and every file's metadata.

    Every name in it is checked before anything is written: the hub never decides where a file lands."""
    from huggingface_hub import HfApi

    source = f"{repo_id}@{revision}"
    try:
        info = HfApi(endpoint=settings.endpoint, token=settings.token).model_info(
            repo_id, revision=revision, files_metadata=True, timeout=settings.metadata_timeout_s
        )
    except (TypeError, KeyError, AttributeError) as exc:  # JSON, but not shaped as a model's info
        raise HubListingError(
            f"{source}: the hub's listing is malformed ({type(exc).__name__}: {exc}): "
            f"check that HF_ENDPOINT ({settings.endpoint}) is a Hugging Face hub"
        ) from None
    except Exception as exc:
        raise translate(exc, settings, repo_id, revision) from None
    if not isinstance(info.sha, str) or not info.sha:
        raise HubListingError(f"{source}: the hub's listing is malformed: it names no commit (sha)")
    try:
        files = tuple(
            HubFile(
                path=check_repo_path(s.rfilename, source, "the hub's listing"),
                size=s.lfs.size if s.lfs else (s.size or 0),
                sha256=s.lfs.sha256 if s.lfs else None,
                blob_id=s.blob_id,
            )
            for s in info.siblings or ()
        )
    except ValidationError as exc:
        raise HubListingError(
            f"{source}: the hub's listing is malformed: {exc.errors()[0]['msg']} in a file's metadata"
        ) from None
    return RepoListing(repo_id=repo_id, revision=revision, commit=info.sha, files=files)


def apply_read_timeout(settings: HubSettings) -> None:
    """The timeout of each read of a file's body has no parameter: huggingface_hub reads this constant
    (set from the environment when it was imported) per request."""
    from huggingface_hub import constants

    constants.HF_HUB_DOWNLOAD_TIMEOUT = settings.download_timeout_s


def download_file(settings: HubSettings, cache_dir: Path, repo_id: str, commit: str, name: str) -> Path:
    """The file's path in the huggingface_hub cache (a symlink into blobs/), downloaded or resumed if needed."""
    from huggingface_hub import hf_hub_download

    apply_read_timeout(settings)
    return Path(
        hf_hub_download(
            repo_id,
            name,
            revision=commit,
            cache_dir=cache_dir,
            endpoint=settings.endpoint,
            token=settings.token,
            local_files_only=settings.offline,
            etag_timeout=settings.metadata_timeout_s,
        )
    )


def blob_path(cache_dir: Path, repo_id: str, file: HubFile) -> Path | None:
    """Where huggingface_hub writes the file's blob (plus `.incomplete` while it downloads)."""
    from huggingface_hub.file_download import repo_folder_name

    if file.etag is None:
        return None
    return cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs" / file.etag


def is_transient(exc: BaseException) -> bool:
    """Worth another call, which resumes from the `.incomplete` file: a connection dropped mid-file.

    Timeouts, refused connections and 5xx answers are not: huggingface_hub has retried those already
    (with back-off), and calling again would only multiply the wait."""
    import requests

    if isinstance(exc, requests.HTTPError):
        return _status(exc) == 429
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return True
    # huggingface_hub's size check ("Consistency check failed") is an OSError without an errno;
    # a full disk or a permission problem carries one and will not go away by retrying.
    return type(exc) is OSError and exc.errno is None


def translate(
    exc: BaseException,
    settings: HubSettings,
    repo_id: str,
    revision: str,
    file: str | None = None,
    *,
    cache_dir: Path | None = None,
) -> FetchError | DiskSpaceError:
    """One line saying what the hub answered and what to do. Unknown exceptions are re-raised (a bug)."""
    import requests
    from huggingface_hub.errors import (
        EntryNotFoundError,
        FileMetadataError,
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = settings.model_page(repo_id)
    login = "set HF_TOKEN (or run `hf auth login`)"
    where = f"{file}: " if file else ""
    what = f"{file} of {repo_id}@{revision}" if file else f"the listing of {repo_id}@{revision}"
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)) and settings.offline:
        return FetchError(
            f"{where}{repo_id}@{revision} is not in the download cache and HF_HUB_OFFLINE is set: "
            "run fetch once online, or set model.source = 'local'",
            file=file,
        )
    from_head = isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None
    if from_head:
        exc = exc.__cause__  # online, the HEAD call failed: huggingface_hub keeps why as the cause
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
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return HubAccessError(
            repo_id,
            404,
            f"{where}the hub lists it in {repo_id}@{revision} but has no such file (404): rerun to list the "
            "repo again; if it persists, the repo is broken",
            file=file,
        )
    if isinstance(exc, requests.HTTPError) and _status(exc) is not None:  # HfHubHTTPError is one
        return _http_error(exc, settings, repo_id, what, login, file)
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        return HubListingError(
            f"{settings.endpoint} answered the request for {what} with something that is not JSON "
            f"({_excerpt(exc.doc)}): HF_ENDPOINT must point at a Hugging Face hub or a mirror of its API",
            file=file,
        )
    if isinstance(exc, FileMetadataError):  # a HEAD answer without the headers a hub sends
        return HubListingError(
            f"{where}{settings.endpoint} answered without the file's metadata ({exc}): "
            "HF_ENDPOINT must point at a Hugging Face hub or a mirror of its API",
            file=file,
        )
    if _timed_out(exc):
        reading = file is not None and not from_head  # else the listing or a file's HEAD call
        limit = settings.download_timeout_s if reading else settings.metadata_timeout_s
        env = DOWNLOAD_TIMEOUT_ENV if reading else METADATA_TIMEOUT_ENV
        return FetchError(
            f"{where}the hub at {settings.endpoint} did not answer within {limit:g} s"
            + (" (each of 6 tries)" if file else "")
            + f" for {what}: check the network or the hub's status, or raise {env}",
            file=file,
        )
    if isinstance(exc, requests.ConnectionError):
        return FetchError(
            f"{where}cannot reach the hub at {settings.endpoint}: check the network, the proxy or HF_ENDPOINT; "
            "to use files fetched before, set HF_HUB_OFFLINE=1",
            file=file,
        )
    if is_transient(exc):
        return FetchError(
            f"{where}the download kept failing ({type(exc).__name__}): check the network and rerun; "
            "finished files are kept and this one resumes where it stopped",
            file=file,
        )
    if isinstance(exc, OSError) and exc.errno is not None:
        full = DiskSpaceError.from_error(exc, where=cache_dir)
        if full is not None:
            return full
        return FetchError(  # a read-only or missing cache dir
            f"{where}cannot write the download cache: {exc.strerror} ({exc.filename})", file=file
        )
    raise exc


def _http_error(
    exc: BaseException, settings: HubSettings, repo_id: str, what: str, login: str, file: str | None
) -> FetchError:
    """An HTTP error without an X-Error-Code the client knows: say what the hub answered."""
    status = _status(exc) or 0
    answered = f"the hub at {settings.endpoint} answered {status}{_reason(exc)} for {what}"
    if status == 401:
        return HubAccessError(
            repo_id,
            401,
            f"the hub rejected the token (401): {login} with a valid token from "
            f"{settings.endpoint}/settings/tokens",
            file=file,
        )
    if status == 403:
        return HubAccessError(
            repo_id,
            403,
            f"this token may not read {repo_id} (403): give it read access to the repo "
            "(fine-grained tokens list their repos) or use another token",
            file=file,
        )
    if status in (404, 410):
        return HubAccessError(
            repo_id,
            status,
            f"{answered}: no such repo or file there; check model.repo_id, model.revision and HF_ENDPOINT",
            file=file,
        )
    if status == 429:
        return FetchError(f"{answered}: too many requests; wait a few minutes and rerun", file=file)
    if 400 <= status < 500:
        return HubAccessError(
            repo_id,
            status,
            f"{answered}: the hub refused the request; check model.repo_id and HF_ENDPOINT",
            file=file,
        )
    return FetchError(
        f"{answered} (after retries): the hub is failing; rerun later (finished files are kept)", file=file
    )


def _timed_out(exc: BaseException) -> bool:
    """A timeout, including one mid-body, which requests raises as a ConnectionError around urllib3's."""
    import requests
    from urllib3.exceptions import ReadTimeoutError

    if isinstance(exc, requests.Timeout):
        return True
    return isinstance(exc, requests.ConnectionError) and any(
        isinstance(a, ReadTimeoutError) for a in exc.args
    )


def _reason(exc: BaseException) -> str:
    """The hub's own words, if it gave any (X-Error-Message, else the body's start)."""
    response = getattr(exc, "response", None)
    if response is None:
        return ""
    message = response.headers.get("X-Error-Message") or ""
    if not message:
        try:
            message = response.text or ""
        except Exception:  # a streamed body already consumed or cut
            message = ""
    return f" ({_excerpt(message)})" if message.strip() else ""


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return response.status_code if response is not None else None
