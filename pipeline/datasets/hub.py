"""Freeze a Hugging Face hub data set into calib_data/ (JSONL + manifest), reproducibly.

Uses huggingface_hub's HTTP API only (no `datasets` package): resolve the
revision to a commit, pick the split's data files, download the first shard
(plenty of rows for a calibration set), draw `samples` rows with a fixed seed
and write them with a manifest naming the commit, file, rows and license.
Parquet shards need pyarrow (present in the TensorRT-LLM container); JSON and
JSONL shards need nothing.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import InputError, MissingDependencyError, StageError
from pipeline.core.reporter import Reporter
from pipeline.datasets.jsonl import parse_jsonl_texts, write_jsonl_dataset
from pipeline.facts.container import SERVING_CONTAINER

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


class HubDatasetSpec(BaseModel):
    """Which rows to freeze. The default is what TensorRT-LLM's quantization examples calibrate on."""

    model_config = ConfigDict(frozen=True)

    repo_id: str = "abisee/cnn_dailymail"
    config_name: str | None = "3.0.0"
    split: str = "train"
    text_field: str = "article"
    samples: int = Field(default=512, ge=1)
    seed: int = 1234
    revision: str = "main"

    @property
    def file_name(self) -> str:
        parts = [self.repo_id.split("/")[-1], self.config_name, self.split, str(self.samples)]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(p for p in parts if p)) + ".jsonl"


def select_data_files(paths: list[str], *, config_name: str | None, split: str) -> list[str]:
    """The split's data files among a repo's files, sorted (shard 0 first). Pure.

    Matches the hub's layouts `<config>/<split>-00000-of-00003.parquet`,
    `data/<split>-*.parquet` and `<split>.jsonl`.
    """
    split_name = re.compile(rf"^{re.escape(split)}([-._]|$)")
    out = []
    for path in paths:
        p = PurePosixPath(path)
        if not p.name.endswith(DATA_SUFFIXES) or not split_name.match(p.name):
            continue
        if config_name is not None and config_name not in p.parts[:-1]:
            continue
        out.append(path)
    return sorted(out)


def sample_rows(texts: list[str], count: int, seed: int) -> list[tuple[int, str]]:
    """`count` (row index, text) pairs drawn without replacement, in row order. Pure."""
    rows = random.Random(seed).sample(range(len(texts)), min(count, len(texts)))
    return [(i, texts[i]) for i in sorted(rows)]


def read_shard_texts(path: Path, field: str) -> list[str]:
    """The `field` column of a downloaded data file (parquet, JSONL or a JSON list)."""
    if path.name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingDependencyError(
                f"{path.name} is parquet, which needs pyarrow",
                hint=f"pip install pyarrow, or run inside {SERVING_CONTAINER.tag}",
            ) from None
        table = pq.read_table(path)
        if field not in table.column_names:
            raise InputError(f"no column '{field}' (columns: {', '.join(table.column_names)})", path=path)
        return [t for t in table.column(field).to_pylist() if isinstance(t, str) and t.strip()]
    if path.name.endswith(".jsonl"):
        return parse_jsonl_texts(path, field)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON: {exc}", path=path) from None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get(field), str) for r in rows
    ):
        raise InputError(f"expected a JSON list of objects with a string '{field}'", path=path)
    return [r[field] for r in rows]


def fetch_hub_dataset(
    spec: HubDatasetSpec,
    calib_dir: Path,
    *,
    reporter: Reporter,
    endpoint: str | None = None,
    token: str | None = None,
) -> Path:
    """Download, sample and write calib_dir/<spec.file_name> with its manifest; returns its path."""
    from huggingface_hub import HfApi, hf_hub_download

    from pipeline.hub.client import HubSettings, apply_read_timeout

    settings = HubSettings.from_env()  # the timeouts: every call has a bounded time
    apply_read_timeout(settings)
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(spec, settings.metadata_timeout_s):
        info = api.dataset_info(spec.repo_id, revision=spec.revision, timeout=settings.metadata_timeout_s)
        siblings = [s.rfilename for s in info.siblings or []]
        files = select_data_files(siblings, config_name=spec.config_name, split=spec.split)
        if not files:
            where = f"config '{spec.config_name}', " if spec.config_name else ""
            raise InputError(
                f"{spec.repo_id}@{info.sha}: no {where}split '{spec.split}' data files "
                f"({', '.join(siblings[:5]) or 'the repo is empty'}{', …' if len(siblings) > 5 else ''})",
                hint="pass --config-name/--split matching the repo's files",
            )
        reporter.info(f"{spec.repo_id}@{info.sha[:12]}: downloading {files[0]} (1 of {len(files)} shards)")
        local = hf_hub_download(
            spec.repo_id,
            files[0],
            repo_type="dataset",
            revision=info.sha,
            endpoint=endpoint,
            token=token,
            etag_timeout=settings.metadata_timeout_s,
        )
    texts = read_shard_texts(Path(local), spec.text_field)
    chosen = sample_rows(texts, spec.samples, spec.seed)
    if len(chosen) < spec.samples:
        reporter.warn(f"{files[0]} has only {len(texts)} rows; froze all of them")
    license = (info.card_data.get("license") if info.card_data else None) or "see the data set card"
    return write_jsonl_dataset(
        calib_dir / spec.file_name,
        [{"text": text, "row": row} for row, text in chosen],
        origin=(
            f"hf://datasets/{spec.repo_id}@{info.sha}/{files[0]}: {len(chosen)} of {len(texts)} rows "
            f"of '{spec.text_field}', seed {spec.seed}"
        ),
        license=license if isinstance(license, str) else ", ".join(license),
        text_field="text",
    )


@contextmanager
def _hub_errors(spec: HubDatasetSpec, timeout_s: float) -> Iterator[None]:
    """Translate huggingface_hub and network errors into one clear pipeline error."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout

    repo = f"{spec.repo_id}@{spec.revision}"
    offline_tip = "air-gapped? calibrate on calib_data/offline-mix.jsonl (the default) instead"
    try:
        yield
    except GatedRepoError as exc:  # subclasses RepositoryNotFoundError: caught first
        raise InputError(
            f"data set {repo} is gated", hint="accept its terms on the hub and set HF_TOKEN"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise InputError(f"data set {spec.repo_id} not found (or private)", hint="check --repo") from exc
    except RevisionNotFoundError as exc:
        raise InputError(f"data set {repo}: no such revision", hint="check --revision") from exc
    except EntryNotFoundError as exc:
        raise InputError(f"data set {repo}: a listed file is missing on the hub") from exc
    except Timeout as exc:
        raise StageError(
            "calib-data",
            f"the hub did not answer within {timeout_s:g} s for {repo} ({exc.__class__.__name__})",
            hint=f"check the network, or raise HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT; {offline_tip}",
        ) from exc
    except (RequestsConnectionError, ConnectionError) as exc:  # the last: HF_HUB_OFFLINE=1
        raise StageError(
            "calib-data", f"cannot reach the hub for {repo} ({exc.__class__.__name__})", hint=offline_tip
        ) from exc
    except HfHubHTTPError as exc:
        raise StageError("calib-data", f"hub error for {repo}: {exc}", hint=offline_tip) from exc
