"""A small stand-in for the Hugging Face hub on 127.0.0.1, for tests and benchmarks.

It speaks the calls huggingface_hub 0.36 makes to download a model:
`GET /api/models/{repo}[/revision/{rev}][?blobs=True]` (siblings with size,
blobId and LFS metadata) and `HEAD`/`GET /{repo}/resolve/{rev}/{path}` (ETag,
X-Linked-Etag, X-Linked-Size, X-Repo-Commit, Range). Errors carry the hub's
`X-Error-Code`, which is what decides huggingface_hub's exception class.

Fault hooks: drop a connection after N bytes of a file, serve a file with one
byte flipped, private and gated repos, tokens that are invalid or forbidden.
Hostile ones: list a file under any name (`list_as`: absolute, `..`), answer
a status with no X-Error-Code, hang the listing or stall a file's body until
the server stops, answer the listing with a body that is not JSON.

    python tests/hub_server.py org/name FOLDER     # serve FOLDER until killed; prints the URL
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".model", ".pkl")
CHUNK = 1 << 20
LISTING = "<listing>"  # the fault-hook key of the metadata call (`GET /api/models/...`)


@dataclass(frozen=True)
class RepoFile:
    path: str
    disk: Path
    size: int
    sha256: str
    blob_id: str  # git object id: sha1("blob <size>\0" + content)
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id


def describe_file(path: str, disk: Path) -> RepoFile:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {disk.stat().st_size}\0".encode())
    with open(disk, "rb") as f:
        while chunk := f.read(CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
    lfs = path.endswith(LFS_SUFFIXES)
    return RepoFile(path, disk, disk.stat().st_size, sha256.hexdigest(), sha1.hexdigest(), lfs)


@dataclass
class Repo:
    repo_id: str
    files: dict[str, RepoFile]
    commit: str
    branches: dict[str, str]
    private: bool = False  # no token (or a token not in `granted`): 401/404 RepoNotFound
    gated: bool = False  # no token: 401 GatedRepo; a token not in `granted`: 403 GatedRepo
    granted: set[str] = field(default_factory=set)
    forbidden: set[str] = field(default_factory=set)  # tokens answered with a plain 403


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the file path inside the repo for resolve calls, else the URL path
    range: str | None
    authorization: str | None
    at: float = field(default_factory=time.monotonic)  # when it arrived


class HubServer:
    """`with HubServer() as hub: hub.add_repo("org/name", folder)`; point HF_ENDPOINT at `hub.url`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.valid_tokens: set[str] = set()
        self.drops: dict[str, list[int]] = {}  # file -> bytes to send before dropping, one entry per GET
        self.corrupt: dict[str, int] = {}  # file -> offset of the byte flipped in every GET
        self.statuses: dict[str, int] = {}  # file or LISTING -> status answered, with no X-Error-Code
        self.hangs: set[str] = set()  # LISTING: never answer; a file: send its headers, then stall
        self.listing_body: bytes | None = None  # answer the metadata call with this instead
        self.released = threading.Event()  # set when the server stops: every hang ends
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def list_as(self, repo_id: str, name: str, disk: Path) -> None:
        """List (and serve) the file at `disk` under `name`, whatever that name is."""
        self.repos[repo_id].files[name] = describe_file(name, disk)

    def wait_for(self, path: str, timeout_s: float = 30.0) -> None:
        """Block until a request for `path` (a file, or the listing's URL path prefix) has arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if any(r.path == path or r.path.startswith(path) for r in self.requests):
                    return
            time.sleep(0.01)
        raise TimeoutError(f"no request for {path} within {timeout_s} s")

    def add_repo(self, repo_id: str, folder: Path, **options: object) -> Repo:
        files = {
            p.relative_to(folder).as_posix(): describe_file(p.relative_to(folder).as_posix(), p)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        commit = hashlib.sha1(json.dumps({k: f.etag for k, f in files.items()}).encode()).hexdigest()
        repo = Repo(repo_id, files, commit, {"main": commit}, **options)  # type: ignore[arg-type]
        self.repos[repo_id] = repo
        return repo

    def gets(self, path: str) -> list[Request]:
        """Every GET of one repo file, in order (HEAD calls left out)."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path == path]

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's session expects
    server_version = "hub-stand-in"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read hub.requests
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/api/models/"):
            self.hub.record(Request(self.command, url.path, None, self.headers.get("Authorization")))
            if self._fault(LISTING):
                return None
            return self._model_info(url.path.removeprefix("/api/models/"), parse_qs(url.query))
        if "/resolve/" in url.path:
            repo_id, rest = url.path.lstrip("/").split("/resolve/", 1)
            revision, _, filename = rest.partition("/")
            filename = unquote(filename)
            auth = self.headers.get("Authorization")
            self.hub.record(Request(self.command, filename, self.headers.get("Range"), auth))
            if filename in self.hub.statuses:
                return self._error(self.hub.statuses[filename], None, "Something went wrong")
            return self._resolve(repo_id, unquote(revision), filename, body=body)
        self._error(404, None, "Not Found")

    def _fault(self, key: str) -> bool:
        """Apply a fault hook of the metadata call; True when it answered (or never will)."""
        if key in self.hub.hangs:
            self.hub.released.wait()
            self.close_connection = True
            return True
        if key in self.hub.statuses:
            self._error(self.hub.statuses[key], None, "Something went wrong")
            return True
        if self.hub.listing_body is not None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(self.hub.listing_body)))
            self.end_headers()
            self.wfile.write(self.hub.listing_body)
            return True
        return False

    def _access_error(self, repo: Repo | None) -> tuple[int, str | None, str] | None:
        auth = self.headers.get("Authorization")
        token = auth.removeprefix("Bearer ") if auth else None
        if token is not None and token not in self.hub.valid_tokens:
            return 401, None, "Invalid credentials in Authorization header"
        if repo is None or (repo.private and token not in repo.granted):
            return (401 if token is None else 404), "RepoNotFound", "Repository not found"
        if token in repo.forbidden:
            return 403, None, "This token does not have read access to this repository"
        if repo.gated and token not in repo.granted:
            message = f"Access to model {repo.repo_id} is restricted. You must have access to it."
            return (401 if token is None else 403), "GatedRepo", message
        return None

    def _find(self, repo_id: str, revision: str) -> tuple[Repo, str] | None:
        repo = self.hub.repos.get(repo_id)
        error = self._access_error(repo)
        if error is not None:
            self._error(*error)
            return None
        assert repo is not None
        commit = repo.branches.get(revision, revision if revision == repo.commit else None)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, commit

    def _model_info(self, rest: str, query: dict[str, list[str]]) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        found = self._find(repo_id, unquote(revision) or "main")
        if found is None:
            return
        repo, commit = found
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.files.values():
            sibling: dict[str, object] = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(sibling)
        data = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit,
            "private": repo.private,
            "siblings": siblings,
        }
        payload = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _resolve(self, repo_id: str, revision: str, filename: str, *, body: bool) -> None:
        found = self._find(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        f = repo.files.get(filename)
        if f is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist at {commit}", commit=commit)
            return
        start, end = 0, f.size
        range_header = self.headers.get("Range")
        if range_header:
            first, _, last = range_header.removeprefix("bytes=").partition("-")
            start, end = int(first), (int(last) + 1 if last else f.size)
        self.send_response(206 if range_header else 200)
        self.send_header("Content-Length", str(end - start))
        if range_header:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f.etag}"')
        self.send_header("X-Repo-Commit", commit)
        if f.lfs:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        self.end_headers()
        if body:
            self._send_body(f, start, end)

    def _send_body(self, f: RepoFile, start: int, end: int) -> None:
        if f.path in self.hub.hangs:  # headers sent, then not a byte more
            self.hub.released.wait()
            self.close_connection = True
            return
        drops = self.hub.drops.get(f.path)
        drop_after = drops.pop(0) if drops else None
        flip_at = self.hub.corrupt.get(f.path)
        with open(f.disk, "rb") as fh:
            if drop_after is None and flip_at is None:
                self.connection.sendfile(fh, start, end - start)
                return
            fh.seek(start)
            pos = start
            while pos < end:
                chunk = bytearray(fh.read(min(CHUNK, end - pos)))
                if flip_at is not None and pos <= flip_at < pos + len(chunk):
                    chunk[flip_at - pos] ^= 0xFF
                if drop_after is not None and pos - start + len(chunk) >= drop_after:
                    self.wfile.write(chunk[: drop_after - (pos - start)])
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(chunk)
                pos += len(chunk)

    def _error(self, status: int, code: str | None, message: str, *, commit: str | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def main(argv: list[str]) -> None:
    repo_id, folder = argv
    with HubServer() as hub:
        hub.add_repo(repo_id, Path(folder))
        print(hub.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
