"""JSONL data sets with a manifest beside them (origin, license, count, sha256).

Writing is deterministic (sorted nothing, same bytes for the same records) so the
committed offline sets can be checked against their generator. Loading validates
every line and names the file and the line (or field) of the first problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pipeline.core.atomic import write_text_atomic
from pipeline.core.errors import InputError
from pipeline.core.hashing import sha256_file

DEFAULT_TEXT_FIELD = "text"
# A prompts file (gate.prompts), read by the gate, smoke and the self-test alike: {"prompt": str} per line.
PROMPT_FIELD = "prompt"


class DatasetManifest(BaseModel):
    file: str
    origin: str
    license: str
    count: int
    text_field: str
    sha256: str


@dataclass(frozen=True)
class LoadedTexts:
    """The texts of a validated JSONL file, with what identifies them."""

    path: Path
    texts: list[str]  # the first `limit` of them
    records: int  # in the whole file
    sha256: str
    text_field: str
    manifest: DatasetManifest | None  # None: a user's own file without a manifest


def manifest_path(dataset: Path) -> Path:
    return dataset.with_name(dataset.name.removesuffix(".jsonl") + ".manifest.json")


def jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_jsonl_dataset(
    path: Path, records: list[dict], *, origin: str, license: str, text_field: str
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, jsonl_text(records))
    manifest = DatasetManifest(
        file=path.name,
        origin=origin,
        license=license,
        count=len(records),
        text_field=text_field,
        sha256=sha256_file(path),
    )
    write_text_atomic(manifest_path(path), manifest.model_dump_json(indent=2) + "\n")
    return path


def read_manifest(dataset: Path) -> DatasetManifest | None:
    """The manifest beside `dataset`, or None when there is none (a user's own file)."""
    path = manifest_path(dataset)
    if not path.is_file():
        return None
    try:
        return DatasetManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(file)"
        raise InputError(
            f"invalid manifest: {field}: {err['msg']}", path=path, hint="rewrite it or delete it"
        ) from None


def load_texts(path: Path, *, text_field: str | None = None, limit: int | None = None) -> LoadedTexts:
    """Read and validate a JSONL file of {text_field: str} records.

    The text field comes from the argument, else the manifest, else "text".
    With a manifest beside the file, its sha256 and count must match the file.
    `limit` keeps the first N texts (every line is still validated).
    """
    if not path.is_file():
        raise InputError(
            "calibration data file not found", path=path, hint="check calibration.dataset in the config"
        )
    manifest = read_manifest(path)
    digest = sha256_file(path)
    if manifest is not None and manifest.sha256 != digest:
        raise InputError(
            f"sha256 {digest[:12]}… does not match its manifest ({manifest.sha256[:12]}…): "
            "the file changed after it was frozen",
            path=path,
            hint=f"restore it, or regenerate it and {manifest_path(path).name}",
        )
    field = text_field or (manifest.text_field if manifest else DEFAULT_TEXT_FIELD)
    texts = parse_jsonl_texts(path, field)
    if manifest is not None and manifest.count != len(texts):
        raise InputError(f"has {len(texts)} records but its manifest says {manifest.count}", path=path)
    return LoadedTexts(
        path=path,
        texts=texts[:limit] if limit is not None else texts,
        records=len(texts),
        sha256=digest,
        text_field=field,
        manifest=manifest,
    )


def load_prompts(path: Path, *, limit: int | None = None) -> LoadedTexts:
    """The prompts of a prompts file (gate.prompts): one schema, {"prompt": str} per line, for every
    reader, with or without a manifest beside it."""
    return load_texts(path, text_field=PROMPT_FIELD, limit=limit)


def parse_jsonl_texts(path: Path, field: str) -> list[str]:
    """Every record's `field`; InputError naming the line of the first bad record."""
    texts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", path=path) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"line {number}: not valid JSON ({exc.msg})", path=path) from None
        if not isinstance(record, dict):
            raise InputError(f"line {number}: expected a JSON object, got {type(record).__name__}", path=path)
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            problem = "missing" if field not in record else "not a non-empty string"
            raise InputError(
                f"line {number}: field '{field}' is {problem}",
                path=path,
                hint=f"each line must be a JSON object whose '{field}' is a non-empty string",
            )
        texts.append(value)
    if not texts:
        raise InputError("no records (the file is empty)", path=path, hint="point at a JSONL file with text")
    return texts
