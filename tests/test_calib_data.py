"""calib_data/: the committed offline sets, the validating loader, and freezing a hub data set."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hub_server import LISTING, HubServer, _Handler

from pipeline.cli import main
from pipeline.core.errors import InputError, MissingDependencyError, StageError
from pipeline.core.hashing import sha256_file
from pipeline.core.reporter import RecordingReporter
from pipeline.datasets.hub import (
    HubDatasetSpec,
    fetch_hub_dataset,
    read_shard_texts,
    sample_rows,
    select_data_files,
)
from pipeline.datasets.jsonl import load_texts, manifest_path, read_manifest, write_jsonl_dataset
from pipeline.datasets.offline import OFFLINE_SETS, write_offline_sets

# --- the committed offline sets -------------------------------------------------------------


def test_committed_offline_sets_are_the_generator_output(repo_root, tmp_path):
    write_offline_sets(tmp_path)
    for name in OFFLINE_SETS:
        committed = repo_root / "calib_data" / name
        assert committed.read_bytes() == (tmp_path / name).read_bytes(), (
            f"{name}: run calib-data write-offline"
        )
        assert manifest_path(committed).read_bytes() == manifest_path(tmp_path / name).read_bytes()


def test_committed_offline_manifests_match_their_files(repo_root):
    for name in OFFLINE_SETS:
        path = repo_root / "calib_data" / name
        manifest = read_manifest(path)
        assert manifest is not None and manifest.file == Path(name).name
        assert manifest.sha256 == sha256_file(path)
        assert manifest.count == len(path.read_text().splitlines())
        assert len(load_texts(path).texts) == manifest.count


def test_offline_mix_is_varied(repo_root):
    kinds = {json.loads(line)["kind"] for line in (repo_root / "calib_data/offline-mix.jsonl").open()}
    assert kinds == {"prose", "dialogue", "numbers", "multilingual", "code"}


# --- the loader ------------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_user_jsonl_without_manifest_loads_with_limit(tmp_path):
    path = write_lines(
        tmp_path / "mine.jsonl", [json.dumps({"text": f"sample {i}"}) for i in range(5)] + [""]
    )
    loaded = load_texts(path, limit=3)
    assert loaded.texts == ["sample 0", "sample 1", "sample 2"]
    assert loaded.records == 5 and loaded.manifest is None and loaded.sha256 == sha256_file(path)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], "no records (the file is empty)"),
        (['{"text": "ok"}', '{"text": "ok"}', '{"text": "tru'], "line 3: not valid JSON"),
        (['{"text": "ok"}', '{"body": "no text field"}'], "line 2: field 'text' is missing"),
        (['{"text": ""}'], "line 1: field 'text' is not a non-empty string"),
        (['["a", "list"]'], "line 1: expected a JSON object, got list"),
    ],
    ids=["empty", "corrupt-line", "missing-field", "empty-text", "not-object"],
)
def test_bad_jsonl_names_the_file_and_line(tmp_path, lines, expected):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(InputError) as err:
        load_texts(path)
    assert err.value.message.startswith(f"{path}: ")
    assert expected in err.value.message


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_texts(tmp_path / "absent.jsonl")


def test_file_changed_after_freezing_fails_its_manifest_check(tmp_path):
    path = write_jsonl_dataset(
        tmp_path / "set.jsonl", [{"text": "a"}, {"text": "b"}], origin="test", license="x", text_field="text"
    )
    assert load_texts(path).manifest is not None
    path.write_text(path.read_text().replace('"a"', '"A"'))
    with pytest.raises(InputError, match="does not match its manifest"):
        load_texts(path)


def test_manifest_count_and_text_field_are_used(tmp_path):
    path = write_jsonl_dataset(
        tmp_path / "p.jsonl", [{"prompt": "x"}, {"prompt": "y"}], origin="t", license="x", text_field="prompt"
    )
    assert load_texts(path).texts == ["x", "y"]  # the manifest names the field
    manifest = json.loads(manifest_path(path).read_text())
    manifest_path(path).write_text(json.dumps(manifest | {"count": 3}))
    with pytest.raises(InputError, match="has 2 records but its manifest says 3"):
        load_texts(path)
    manifest_path(path).write_text("{not json")
    with pytest.raises(InputError, match="invalid manifest"):
        load_texts(path)


# --- freezing a hub data set -----------------------------------------------------------------


def test_select_data_files_for_config_and_split():
    files = [
        "README.md",
        "1.0.0/train-00000-of-00003.parquet",
        "3.0.0/test-00000-of-00001.parquet",
        "3.0.0/train-00001-of-00003.parquet",
        "3.0.0/train-00000-of-00003.parquet",
        "3.0.0/trainval-00000-of-00001.parquet",
    ]
    assert select_data_files(files, config_name="3.0.0", split="train") == [
        "3.0.0/train-00000-of-00003.parquet",
        "3.0.0/train-00001-of-00003.parquet",
    ]
    assert select_data_files(["data/train.jsonl", "data/test.jsonl"], config_name=None, split="test") == [
        "data/test.jsonl"
    ]
    assert select_data_files(files, config_name="2.0.0", split="train") == []


def test_sample_rows_is_fixed_by_the_seed():
    texts = [f"row {i}" for i in range(100)]
    first = sample_rows(texts, 10, seed=1)
    assert first == sample_rows(texts, 10, seed=1)
    assert first != sample_rows(texts, 10, seed=2)
    assert [i for i, _ in first] == sorted(i for i, _ in first) and len(set(first)) == 10
    assert len(sample_rows(texts[:4], 10, seed=1)) == 4


def test_parquet_without_pyarrow_is_a_missing_dependency(tmp_path):
    if importlib.util.find_spec("pyarrow") is not None:
        pytest.skip("pyarrow is installed")
    (tmp_path / "train-0.parquet").write_bytes(b"PAR1")
    with pytest.raises(MissingDependencyError, match="needs pyarrow"):
        read_shard_texts(tmp_path / "train-0.parquet", "article")


def test_json_list_shard_is_read(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"article": "one"}, {"article": "two"}]))
    assert read_shard_texts(path, "article") == ["one", "two"]
    path.write_text(json.dumps([{"other": "one"}]))
    with pytest.raises(InputError, match="string 'article'"):
        read_shard_texts(path, "article")


class _DatasetHandler(_Handler):
    """tests/hub_server.py speaks the model API; the data set API differs only in its
    `/api/datasets/` prefix and a `datasets/` prefix on resolve URLs."""

    def _serve(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/api/datasets/"):
            self.path = self.path.replace("/api/datasets/", "/api/models/", 1)
        elif path.startswith("/datasets/"):
            self.path = self.path.removeprefix("/datasets")
        super()._serve(body=body)


@pytest.fixture
def dataset_hub(tmp_path):
    folder = tmp_path / "repo"
    (folder / "3.0.0").mkdir(parents=True)
    rows = [{"article": f"Article number {i}: the council met on day {i}.", "id": str(i)} for i in range(40)]
    (folder / "3.0.0" / "train-00000-of-00002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "3.0.0" / "train-00001-of-00002.jsonl").write_text('{"article": "second shard"}\n')
    (folder / "3.0.0" / "test-00000-of-00001.jsonl").write_text('{"article": "test split"}\n')
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    with HubServer() as hub:
        hub._httpd.RequestHandlerClass = _DatasetHandler  # type: ignore[attr-defined]
        hub.add_repo("org/news", folder)
        yield hub


def test_fetch_freezes_sampled_rows_with_commit_and_checksum(dataset_hub, tmp_path):
    spec = HubDatasetSpec(repo_id="org/news", samples=8, seed=3)
    out = tmp_path / "calib"
    path = fetch_hub_dataset(spec, out, reporter=RecordingReporter(), endpoint=dataset_hub.url)
    assert path == out / "news-3.0.0-train-8.jsonl"
    loaded = load_texts(path)
    assert len(loaded.texts) == 8 and all(t.startswith("Article number") for t in loaded.texts)
    manifest = loaded.manifest
    assert manifest is not None and manifest.sha256 == sha256_file(path) and manifest.count == 8
    commit = dataset_hub.repos["org/news"].commit
    assert f"hf://datasets/org/news@{commit}/3.0.0/train-00000-of-00002.jsonl" in manifest.origin
    assert "seed 3" in manifest.origin
    # Only the first shard is downloaded; a second fetch reproduces the same bytes.
    assert dataset_hub.gets("3.0.0/train-00001-of-00002.jsonl") == []
    first = path.read_bytes()
    fetch_hub_dataset(spec, out, reporter=RecordingReporter(), endpoint=dataset_hub.url)
    assert path.read_bytes() == first


def test_fetch_errors_are_clear(dataset_hub, tmp_path):
    reporter = RecordingReporter()
    with pytest.raises(InputError, match="no config '3.0.0', split 'validation' data files"):
        fetch_hub_dataset(
            HubDatasetSpec(repo_id="org/news", split="validation"),
            tmp_path,
            reporter=reporter,
            endpoint=dataset_hub.url,
        )
    with pytest.raises(InputError, match="data set org/absent not found"):
        fetch_hub_dataset(
            HubDatasetSpec(repo_id="org/absent"), tmp_path, reporter=reporter, endpoint=dataset_hub.url
        )
    with pytest.raises(InputError, match="no column|field 'body' is missing"):
        fetch_hub_dataset(
            HubDatasetSpec(repo_id="org/news", text_field="body"),
            tmp_path,
            reporter=reporter,
            endpoint=dataset_hub.url,
        )
    with pytest.raises(StageError, match="cannot reach the hub"):
        fetch_hub_dataset(HubDatasetSpec(), tmp_path, reporter=reporter, endpoint="http://127.0.0.1:9")


def test_a_hub_that_never_answers_fails_in_bounded_time(dataset_hub, tmp_path, monkeypatch):
    dataset_hub.hangs.add(LISTING)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    t0 = time.monotonic()
    with pytest.raises(StageError, match=r"the hub did not answer within 1 s for org/news@main"):
        fetch_hub_dataset(
            HubDatasetSpec(repo_id="org/news"),
            tmp_path,
            reporter=RecordingReporter(),
            endpoint=dataset_hub.url,
        )
    assert time.monotonic() - t0 < 10


def test_cli_fetch_and_write_offline(dataset_hub, tmp_path, capsys):
    out = tmp_path / "calib"
    code = main(
        [
            "calib-data",
            "fetch",
            "--repo",
            "org/news",
            "--samples",
            "5",
            "--endpoint",
            dataset_hub.url,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "5 records, sha256" in capsys.readouterr().out
    assert (
        main(
            ["calib-data", "fetch", "--repo", "org/absent", "--endpoint", dataset_hub.url, "--out", str(out)]
        )
        == 2
    )
    assert "ERROR" in capsys.readouterr().err
    assert main(["calib-data", "write-offline", "--out", str(out)]) == 0
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.jsonl")}
    assert written == {"news-3.0.0-train-5.jsonl", *OFFLINE_SETS}
