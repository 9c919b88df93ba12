"""The fetch stage: the model as a Hugging Face folder in `model/`, every file verified.

Three sources make the same artifact:
- hub: a revision of a hub repo, downloaded by huggingface_hub into the work
  dir's cache (`work_dir/hub`), verified, and hard-linked into place;
- local: a folder on disk, copied (a hard link would let an in-place edit of
  the folder change a finished artifact), hashed while copying;
- tiny: the project's own small Mistral, generated (demo, CI).

A branch revision is resolved to its commit when the stage runs, not in the
key: the artifact is reused until --force, and the record says it was a branch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.core.atomic import link_or_copy
from pipeline.core.errors import FetchError, InputError
from pipeline.facts import layout
from pipeline.facts.config import ModelSection, PipelineConfig
from pipeline.hub.selection import SAFETENSORS_INDEX, matches, select_model_files
from pipeline.hub.tiny_model import TRAIN_THREADS
from pipeline.planning.tasks import Task
from pipeline.stages.base import Stage, StageContext, StageOutcome

CHUNK = 8 * 1024 * 1024


class FetchedFile(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str  # inside model/
    size: int
    sha256: str


class FetchRecord(BaseModel):
    model_config = ConfigDict(frozen=True)
    source: Literal["hub", "local", "tiny"]
    repo_id: str | None = None
    revision: str | None = None  # as configured
    commit: str | None = None  # what the revision resolved to
    revision_is_branch: bool = False  # a branch or tag, not a commit: rerunning may give another commit
    local_path: str | None = None
    files: tuple[FetchedFile, ...]


class Fetch(Stage):
    """The model as a Hugging Face folder, from the hub, a local folder or the tiny generator."""

    name = "fetch"
    version = 1
    tools = ("huggingface-hub",)

    def config_section(self, config: PipelineConfig, task: Task) -> dict[str, Any]:
        model = config.model
        if model.source == "hub":
            return {
                "source": "hub",
                "repo_id": model.repo_id,
                "revision": model.revision,
                "allow_patterns": list(model.allow_patterns),
                "allow_pickle": model.allow_pickle,
            }
        if model.source == "local":
            assert model.local_path is not None
            return {
                "source": "local",
                "local_path": str(model.local_path),
                "allow_patterns": list(model.allow_patterns),
                "allow_pickle": model.allow_pickle,
                "files": _stat_fingerprint(model.local_path, model),
            }
        return {
            "source": "tiny",
            "tiny_seed": model.tiny_seed,
            "tiny_train_steps": model.tiny_train_steps,
            "tiny_size": model.tiny_size,
            "tiny_train_threads": TRAIN_THREADS,
        }

    def run(self, ctx: StageContext) -> StageOutcome:
        model = ctx.config.model
        out = layout.model_dir(ctx.out_dir)
        out.mkdir()
        if model.source == "hub":
            record = _fetch_hub(ctx, out)
            label = f"{model.repo_id}@{(record.commit or '')[:12]}"
        elif model.source == "local":
            record = _copy_local(ctx, out)
            label = str(model.local_path)
        else:
            record = _generate_tiny(ctx, out)
            label = f"tiny Mistral (seed {model.tiny_seed})"
        refuse_remote_code(out / "config.json", allowed=model.trust_remote_code)
        for f in record.files:
            ctx.known_sha256[f"{layout.MODEL}/{f.path}"] = f.sha256
        size = sum(f.size for f in record.files)
        amount = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
        return StageOutcome(summary=f"{label}: {len(record.files)} files, {amount}", record=record)


def refuse_remote_code(config_json: Path, *, allowed: bool) -> None:
    """A model whose config.json maps its classes to its own code (auto_map) runs that code when
    loaded with trust_remote_code: refuse it unless the config opts in."""
    try:
        auto_map = json.loads(config_json.read_text()).get("auto_map")
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable model config: {exc}", path=config_json) from None
    if auto_map and not allowed:
        raise InputError(
            f"auto_map names the model's own code ({', '.join(sorted(auto_map))}); it is not run by default",
            path=config_json,
            hint="review that code, then set model.trust_remote_code = true (and add '*.py' to allow_patterns)",
        )


def _fetch_hub(ctx: StageContext, out: Path) -> FetchRecord:
    from pipeline.hub import fetch_repo

    model = ctx.config.model
    assert model.repo_id is not None
    fetched = fetch_repo(
        model.repo_id,
        model.revision,
        patterns=model.allow_patterns,
        allow_pickle=model.allow_pickle,
        hub_dir=ctx.work_dir / "hub",
        reporter=ctx.reporter,
        log=ctx.log,
    )
    commit = fetched.listing.commit
    if fetched.offline:
        ctx.reporter.info(
            f"HF_HUB_OFFLINE is set: verified the cached download of {model.repo_id}@{commit[:12]}"
        )
    if not model.revision_is_commit:
        ctx.reporter.warn(
            f"model.revision '{model.revision}' is a branch or tag; it resolved to {commit}. Pin that commit for "
            "reproducible builds: this artifact is reused until fetch runs with --force"
        )
    for name, verified in fetched.files.items():
        # A hard link from the download cache (its blobs are never written in place); a copy across
        # filesystems is checked against the verified sha256.
        link_or_copy(verified.path.resolve(), out / name, verified.sha256)
    return FetchRecord(
        source="hub",
        repo_id=model.repo_id,
        revision=model.revision,
        commit=commit,
        revision_is_branch=not model.revision_is_commit,
        files=tuple(FetchedFile(path=n, size=v.size, sha256=v.sha256) for n, v in fetched.files.items()),
    )


def _copy_local(ctx: StageContext, out: Path) -> FetchRecord:
    model = ctx.config.model
    root = model.local_path
    assert root is not None
    if not root.is_dir():
        raise InputError(
            "model.local_path is not a folder", path=root, hint="point it at a Hugging Face model folder"
        )
    selected = select_model_files(
        [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()],
        patterns=model.allow_patterns,
        allow_pickle=model.allow_pickle,
        source=str(root),
        read_index=(root / SAFETENSORS_INDEX).read_text,
    )
    total = sum((root / n).stat().st_size for n in selected)
    with ctx.reporter.progress(f"copy {root.name}", total, unit="B") as advance:
        files = tuple(_copy_hashing(root / name, out / name, name, advance) for name in selected)
    return FetchRecord(source="local", local_path=str(root), files=files)


def _copy_hashing(src: Path, dst: Path, name: str, advance: Callable[[float], None]) -> FetchedFile:
    """Copy and hash in one pass; a file that changes while it is copied is an error, not a silent mix."""
    before = src.stat()
    digest, size = hashlib.sha256(), 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
            advance(len(chunk))
    after = src.stat()
    if size != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise FetchError(f"{src}: changed while it was copied; rerun when nothing writes to it", file=name)
    return FetchedFile(path=name, size=size, sha256=digest.hexdigest())


def _generate_tiny(ctx: StageContext, out: Path) -> FetchRecord:
    from pipeline.core.hashing import sha256_file
    from pipeline.hub.tiny_model import generate_tiny_mistral, tiny_spec

    model = ctx.config.model
    spec = tiny_spec(model.tiny_size, seed=model.tiny_seed, train_steps=model.tiny_train_steps)
    with ctx.reporter.progress("train the tiny Mistral", spec.train_steps, unit="step") as advance:
        generate_tiny_mistral(out, spec, on_step=lambda _step: advance(1))
    files = tuple(
        FetchedFile(path=p.relative_to(out).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(out.rglob("*"))
        if p.is_file()
    )
    return FetchRecord(source="tiny", files=files)


def _stat_fingerprint(root: Path, model: ModelSection) -> list[list[Any]] | str:
    """Names, sizes and mtimes of the files the patterns match: cheap, and changes when the folder does."""
    if not root.is_dir():
        return "missing"
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if matches(name, model.allow_patterns):
            st = path.stat()
            entries.append([name, st.st_size, st.st_mtime_ns])
    return entries
