"""JSONL data sets with a manifest beside them (origin, license, count, sha256)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from pipeline.hashing import sha256_file
from pipeline.store import write_text_atomic


class DatasetManifest(BaseModel):
    file: str
    origin: str
    license: str
    count: int
    text_field: str
    sha256: str


def manifest_path(dataset: Path) -> Path:
    return dataset.with_name(dataset.name.removesuffix(".jsonl") + ".manifest.json")


def write_jsonl_dataset(path: Path, records: list[dict], *, origin: str, license: str, text_field: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    manifest = DatasetManifest(
        file=path.name, origin=origin, license=license, count=len(records), text_field=text_field,
        sha256=sha256_file(path),
    )
    write_text_atomic(manifest_path(path), manifest.model_dump_json(indent=2) + "\n")
    return path
