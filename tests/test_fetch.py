"""The fetch stage against a real HTTP server on 127.0.0.1 that speaks the hub's API (tests/hub_server.py).

huggingface_hub runs for real; only the hub is a stand-in. HF_ENDPOINT and
HF_HUB_OFFLINE are read when a fetch starts, so tests set them per test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import struct
import time
from pathlib import Path

import pytest
from hub_server import HubServer

from pipeline.cli import main
from pipeline.core.errors import ChecksumError, DiskSpaceError, FetchError, InputError, PickleRefusedError
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import execute, fingerprint
from pipeline.execution.results import RunReport, TaskState
from pipeline.facts.config import PipelineConfig, load_config
from pipeline.hub import fetch_repo
from pipeline.hub.selection import select_files
from pipeline.planning.tasks import plan_tasks, select_tasks
from pipeline.stages import STAGES
from pipeline.stages import fetch as fetch_stage

REPO = "org/tiny"
TOKEN = "hf_pipelineTestSecret0123456789"
DEFAULT_PATTERNS = fetch_stage.ModelSection.model_fields["allow_patterns"].default


@pytest.fixture
def hub(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    with HubServer() as server:
        server.add_repo(REPO, tiny_model_dir)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="module")
def big_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model's files with a 24 MB weights file: bigger than huggingface_hub's 10 MB read, so a
    connection dropped mid-file leaves whole chunks on disk to resume from."""
    folder = tmp_path_factory.mktemp("big-model")
    for f in tiny_model_dir.iterdir():
        shutil.copyfile(f, folder / f.name)
    payload = 24_000_000
    header = json.dumps({"w": {"dtype": "U8", "shape": [payload], "data_offsets": [0, payload]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + os.urandom(payload))
    return folder


def make_config(tmp_path: Path, **model: object) -> PipelineConfig:
    fields = {"name": "tiny", "source": "hub", "repo_id": REPO, **model}
    lines = ["[model]", *(f"{k} = {json.dumps(v)}" for k, v in fields.items())]
    lines += ['[target]\ngpu = "cpu"', "[[profiles]]", 'name = "p"', "max_batch_size = 1"]
    lines += ["max_input_len = 8", "max_seq_len = 16"]
    path = tmp_path / "pipeline.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


def run_fetch(
    config: PipelineConfig, work: Path, *, force: bool = False
) -> tuple[RunReport, RecordingReporter]:
    reporter = RecordingReporter()
    tasks = select_tasks(plan_tasks(config), {"fetch"})
    report = execute(
        config,
        ArtifactStore(work),
        tasks,
        reporter=reporter,
        force_stages=frozenset({"fetch"} if force else ()),
    )
    return report, reporter


def artifact(report: RunReport) -> tuple[Path, dict]:
    (result,) = report.results
    assert result.path is not None, result
    return result.path, json.loads((result.path / "manifest.json").read_text())


def model_files(manifest: dict) -> list[dict]:
    """Path, sha256 and size of each model file (the stat record differs from one copy to another)."""
    return [
        {k: v for k, v in f.items() if k != "stat"}
        for f in manifest["files"]
        if f["path"].startswith("model/")
    ]


def hub_fetch(hub_dir: Path, **kwargs):
    options = {"patterns": DEFAULT_PATTERNS, "allow_pickle": False, "retry_delays": ()} | kwargs
    return fetch_repo(
        REPO, "main", hub_dir=hub_dir, reporter=RecordingReporter(), log=logging.getLogger("t"), **options
    )


def test_hub_fetch_writes_the_verified_model_folder(hub, tiny_model_dir, tmp_path):
    report, reporter = run_fetch(make_config(tmp_path), tmp_path / "work")
    assert report.error is None
    path, manifest = artifact(report)
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert sorted(p.name for p in (path / "model").iterdir()) == names
    for name in names:
        assert (path / "model" / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    record = manifest["record"]
    assert record["source"] == "hub" and record["commit"] == hub.repos[REPO].commit
    assert record["revision_is_branch"] is True
    assert {(f["path"], f["sha256"]) for f in record["files"]} == {
        (f["path"].removeprefix("model/"), f["sha256"]) for f in model_files(manifest)
    }
    expected = {name: hub.repos[REPO].files[name].sha256 for name in names}
    assert {f["path"]: f["sha256"] for f in record["files"]} == expected
    assert "is a branch or tag" in reporter.text() and hub.repos[REPO].commit in reporter.text()
    assert reporter.advanced[f"fetch {REPO}"] == sum(f.stat().st_size for f in tiny_model_dir.iterdir())
    # hard links to the download cache, not copies
    assert (path / "model" / "model.safetensors").stat().st_nlink == 2


def test_pinned_commit_does_not_warn_and_an_unchanged_rerun_makes_no_request(hub, tmp_path):
    config = make_config(tmp_path, revision=hub.repos[REPO].commit)
    report, reporter = run_fetch(config, tmp_path / "work")
    assert report.error is None and "branch" not in reporter.text()
    assert artifact(report)[1]["record"]["revision_is_branch"] is False
    calls = len(hub.requests)
    again, _ = run_fetch(config, tmp_path / "work")
    assert again.results[0].state is TaskState.up_to_date
    assert len(hub.requests) == calls


def test_a_dropped_connection_resumes_without_refetching_finished_files(big_model_dir, tmp_path, monkeypatch):
    with HubServer() as hub:
        hub.add_repo(REPO, big_model_dir)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.drops["model.safetensors"] = [15_000_000]
        report, reporter = run_fetch(make_config(tmp_path), tmp_path / "work")
        assert report.error is None, report.error
        first, second = hub.gets("model.safetensors")
        assert first.range is None
        assert second.range is not None and int(second.range.removeprefix("bytes=").rstrip("-")) >= 10_000_000
        for name in hub.repos[REPO].files:
            if name != "model.safetensors":
                assert len(hub.gets(name)) == 1, name
        path, _ = artifact(report)
        assert (path / "model" / "model.safetensors").read_bytes() == (
            big_model_dir / "model.safetensors"
        ).read_bytes()
        assert "attempt 1 failed (ChunkedEncodingError)" in (path / "stage.log").read_text()


def test_a_run_that_gives_up_keeps_finished_files_and_the_next_resumes(big_model_dir, tmp_path, monkeypatch):
    with HubServer() as hub:
        hub.add_repo(REPO, big_model_dir)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.drops["model.safetensors"] = [15_000_000]
        with pytest.raises(FetchError, match=r"model\.safetensors: .*resumes where it stopped") as failed:
            hub_fetch(tmp_path / "hub")
        assert failed.value.file == "model.safetensors"
        before = {name: len(hub.gets(name)) for name in hub.repos[REPO].files}
        fetched = hub_fetch(tmp_path / "hub")
        assert fetched.files["model.safetensors"].sha256 == hub.repos[REPO].files["model.safetensors"].sha256
        resumed = hub.gets("model.safetensors")[-1]
        assert resumed.range is not None and resumed.range != "bytes=0-"
        for name, count in before.items():
            if name != "model.safetensors":
                assert len(hub.gets(name)) == count, f"{name} was downloaded again"


@pytest.mark.parametrize(("name", "what"), [("model.safetensors", "sha256"), ("config.json", "git blob id")])
def test_one_corrupted_byte_fails_names_the_file_and_deletes_it(hub, tmp_path, name, what):
    hub.corrupt[name] = 100
    report, _ = run_fetch(make_config(tmp_path), tmp_path / "work")
    assert isinstance(report.error, ChecksumError)
    assert report.error.file == name and report.error.what == what
    assert report.error.message.startswith(f"fetch: {name}: {what} ")
    blobs = next((tmp_path / "work" / "hub" / "hf-cache").glob("models--*/blobs"))
    assert hub.repos[REPO].files[name].etag not in {p.name for p in blobs.iterdir()}
    assert report.results[0].state is TaskState.failed
    assert not list((tmp_path / "work" / "store" / "fetch").glob("[0-9a-f]*"))
    del hub.corrupt[name]
    again, _ = run_fetch(make_config(tmp_path), tmp_path / "work")
    assert again.error is None
    assert len(hub.gets(name)) == 2


def cli_fetch(config: PipelineConfig, tmp_path: Path, capsys) -> tuple[int, str]:
    config_path = tmp_path / "pipeline.toml"
    code = main(["fetch", "--config", str(config_path), "--work-dir", str(tmp_path / "work")])
    out = capsys.readouterr()
    return code, out.err + out.out


@pytest.mark.parametrize(
    ("repo_options", "token", "expected"),
    [
        (
            {"private": True},
            None,
            "org/tiny was not found (401): check model.repo_id; if the repo is private or gated, set HF_TOKEN",
        ),
        (
            {"gated": True},
            None,
            "org/tiny is gated and no token was given, so you have no access: accept the license on {url}/org/tiny, then set HF_TOKEN",
        ),
        (
            {"gated": True},
            TOKEN,
            "org/tiny is gated and the account of this token has no access: accept the license on {url}/org/tiny with that account",
        ),
        ({"forbidden": {TOKEN}}, TOKEN, "this token may not read org/tiny (403): give it read access"),
        ({"private": True}, TOKEN, "org/tiny was not found, or this token cannot see it (404)"),
        ({}, "hf_notAValidToken", "the hub rejected the token (401): set HF_TOKEN"),
    ],
)
def test_access_errors_are_one_line_that_says_what_to_do(
    tiny_model_dir, tmp_path, monkeypatch, capsys, repo_options, token, expected
):
    with HubServer() as hub:
        hub.valid_tokens.add(TOKEN)
        hub.add_repo(REPO, tiny_model_dir, **repo_options)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        code, output = cli_fetch(make_config(tmp_path), tmp_path, capsys)
        assert code == 2
        (error_line,) = [line for line in output.splitlines() if line.startswith("ERROR")]
        assert expected.format(url=hub.url) in error_line
        if token:
            assert hub.requests[0].authorization == f"Bearer {token}"
    logs = "".join(p.read_text() for p in (tmp_path / "work" / "logs").rglob("*.log"))
    assert TOKEN not in output and TOKEN not in logs


def test_missing_revision_and_missing_repo(hub, tmp_path, capsys):
    code, output = cli_fetch(make_config(tmp_path, revision="v9"), tmp_path, capsys)
    assert code == 2 and "org/tiny has no revision 'v9' (404): check model.revision" in output
    code, output = cli_fetch(make_config(tmp_path, repo_id="org/absent"), tmp_path, capsys)
    assert code == 2 and "org/absent was not found (401)" in output


def test_the_token_reaches_the_hub_but_no_output(tiny_model_dir, tmp_path, monkeypatch, capsys):
    with HubServer() as hub:
        hub.valid_tokens.add(TOKEN)
        hub.add_repo(REPO, tiny_model_dir, gated=True, granted={TOKEN})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        code, output = cli_fetch(make_config(tmp_path), tmp_path, capsys)
        assert code == 0, output
        assert {r.authorization for r in hub.requests} == {f"Bearer {TOKEN}"}
    written = [
        p.read_text() for p in (tmp_path / "work").rglob("*") if p.is_file() and p.suffix in (".log", ".json")
    ]
    assert written and not any(TOKEN in text for text in written)
    assert TOKEN not in output


def test_an_unreachable_hub_says_what_to_do(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code, output = cli_fetch(make_config(tmp_path), tmp_path, capsys)
    assert code == 5
    assert f"cannot reach the hub at http://127.0.0.1:{port}: check the network" in output
    assert "set HF_HUB_OFFLINE=1" in output


def test_pickled_weights_are_refused_unless_opted_in(tiny_model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copyfile(tiny_model_dir / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with HubServer() as hub:
        hub.add_repo(REPO, folder)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        report, _ = run_fetch(make_config(tmp_path), tmp_path / "w1")
        assert isinstance(report.error, PickleRefusedError) and report.error.file == "pytorch_model.bin"
        assert "set model.allow_pickle = true" in report.error.message
        patterns = ["config.json", "*.bin"]
        report, _ = run_fetch(make_config(tmp_path, allow_patterns=patterns), tmp_path / "w2")
        assert isinstance(report.error, PickleRefusedError)
        assert not hub.gets("pytorch_model.bin")
        report, _ = run_fetch(
            make_config(tmp_path, allow_patterns=patterns, allow_pickle=True), tmp_path / "w3"
        )
        assert report.error is None
        assert (artifact(report)[0] / "model" / "pytorch_model.bin").is_file()


def test_only_the_shards_the_index_names_are_fetched(tiny_model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copyfile(tiny_model_dir / "config.json", folder / "config.json")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for i, shard in enumerate(shards):
        (folder / shard).write_bytes(os.urandom(1000 + i))
    (folder / "consolidated.safetensors").write_bytes(os.urandom(3000))  # Mistral's own format: not needed
    index = {"weight_map": {"a.weight": shards[0], "b.weight": shards[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with HubServer() as hub:
        hub.add_repo(REPO, folder)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        report, _ = run_fetch(make_config(tmp_path), tmp_path / "work")
        assert report.error is None
        assert not hub.gets("consolidated.safetensors")
        fetched = sorted(p.name for p in (artifact(report)[0] / "model").iterdir())
        assert fetched == sorted(["config.json", "model.safetensors.index.json", *shards])


def test_selection_rules():
    names = [
        "config.json",
        "a.safetensors",
        "b.safetensors",
        "extra.safetensors",
        "model.safetensors.index.json",
    ]
    pick = dict(patterns=DEFAULT_PATTERNS, allow_pickle=False, source="s")
    assert select_files(names, **pick, shards=frozenset({"a.safetensors", "b.safetensors"})) == [
        "a.safetensors",
        "b.safetensors",
        "config.json",
        "model.safetensors.index.json",
    ]
    with pytest.raises(FetchError, match="names c.safetensors, which is absent"):
        select_files(names, **pick, shards=frozenset({"c.safetensors"}))
    with pytest.raises(FetchError, match="leaves out b.safetensors"):
        select_files(
            names,
            **(pick | {"patterns": ["config.json", "a.*"]}),
            shards=frozenset({"a.safetensors", "b.safetensors"}),
        )
    with pytest.raises(FetchError, match="no config.json"):
        select_files(["a.safetensors"], **pick)
    with pytest.raises(FetchError, match="no weight files match"):
        select_files(["config.json", "tokenizer.json"], **pick)


def test_disk_space_is_checked_before_the_first_byte(hub, tmp_path):
    with pytest.raises(
        DiskSpaceError, match=r"hf-cache: the step needs \d+\.\d kB but only 1\.0 kB is free there"
    ) as exc:
        hub_fetch(tmp_path / "hub", free=lambda path: 1000)
    assert exc.value.needed == sum(f.size for f in hub.repos[REPO].files.values())
    assert exc.value.free == 1000
    assert [r.method for r in hub.requests] == ["GET"]  # the listing only: no file was asked for
    assert hub_fetch(tmp_path / "hub", free=lambda path: exc.value.needed).files


def test_offline_with_a_warm_cache_makes_the_same_artifact(hub, tmp_path, monkeypatch):
    config = make_config(tmp_path)
    online, _ = run_fetch(config, tmp_path / "work")
    _, online_manifest = artifact(online)
    calls = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    offline, reporter = run_fetch(config, tmp_path / "work", force=True)
    assert offline.error is None, offline.error
    _, offline_manifest = artifact(offline)
    assert len(hub.requests) == calls
    assert offline_manifest["record"] == online_manifest["record"]
    assert model_files(offline_manifest) == model_files(online_manifest)
    assert offline_manifest["key"] == online_manifest["key"]
    assert "HF_HUB_OFFLINE is set: verified the cached download" in reporter.text()


def test_offline_without_a_cache_says_what_to_do(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report, _ = run_fetch(make_config(tmp_path), tmp_path / "work")
    assert isinstance(report.error, FetchError)
    assert "HF_HUB_OFFLINE is set and no earlier fetch of it is cached" in report.error.message
    assert "run fetch once online, or set model.source = 'local'" in report.error.message
    assert not hub.requests


def test_a_local_folder_makes_the_same_model_files_as_the_hub(hub, tiny_model_dir, tmp_path):
    from_hub, _ = run_fetch(make_config(tmp_path), tmp_path / "w-hub")
    local_config = make_config(tmp_path, source="local", local_path=str(tiny_model_dir))
    from_local, _ = run_fetch(local_config, tmp_path / "w-local")
    assert from_local.error is None
    _, local_manifest = artifact(from_local)
    assert model_files(local_manifest) == model_files(artifact(from_hub)[1])
    assert local_manifest["record"]["source"] == "local"
    assert local_manifest["record"]["local_path"] == str(tiny_model_dir)


def test_a_changed_local_folder_changes_the_key(tiny_model_dir, tmp_path):
    folder = tmp_path / "local-model"
    shutil.copytree(tiny_model_dir, folder)
    config = make_config(tmp_path, source="local", local_path=str(folder))
    (task,) = select_tasks(plan_tasks(config), {"fetch"})
    before = fingerprint(config, task, STAGES["fetch"], {})
    (folder / "generation_config.json").write_text('{"changed": true}')
    after = fingerprint(config, task, STAGES["fetch"], {})
    assert before != after
    (folder / "notes.txt").write_text("not matched by allow_patterns")
    assert fingerprint(config, task, STAGES["fetch"], {}) == after


def test_a_local_folder_with_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "local-model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "training_args.bin").write_bytes(b"\x80\x04")
    config = make_config(tmp_path, source="local", local_path=str(folder), allow_patterns=["*"])
    report, _ = run_fetch(config, tmp_path / "work")
    assert isinstance(report.error, PickleRefusedError) and report.error.file == "training_args.bin"


def test_a_model_that_maps_to_its_own_code_is_refused_unless_opted_in(tiny_model_dir, tmp_path):
    folder = tmp_path / "local-model"
    shutil.copytree(tiny_model_dir, folder)
    hf_config = json.loads((folder / "config.json").read_text())
    hf_config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(hf_config))
    report, _ = run_fetch(make_config(tmp_path, source="local", local_path=str(folder)), tmp_path / "work")
    assert isinstance(report.error, InputError)
    assert "auto_map names the model's own code (AutoModelForCausalLM)" in report.error.message
    assert "model.trust_remote_code = true" in report.error.hint
    assert not list((tmp_path / "work" / "store" / "fetch").glob("[0-9a-f]*"))  # nothing committed
    opted_in = make_config(tmp_path, source="local", local_path=str(folder), trust_remote_code=True)
    report, _ = run_fetch(opted_in, tmp_path / "work")
    assert report.error is None


def test_the_tiny_source_generates_the_model_folder(tmp_path):
    config = make_config(tmp_path, source="tiny", tiny_train_steps=2)
    report, reporter = run_fetch(config, tmp_path / "work")
    assert report.error is None
    path, manifest = artifact(report)
    assert manifest["record"]["source"] == "tiny"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        f["path"] for f in manifest["record"]["files"]
    }
    assert reporter.advanced["train the tiny Mistral"] == 2
    assert STAGES["fetch"].config_section(config, None) == {
        "source": "tiny",
        "tiny_seed": 0,
        "tiny_train_steps": 2,
        "tiny_size": "demo",
        "tiny_train_threads": 1,  # the weights depend on it (tests/test_ray.py)
    }


def test_the_hash_taken_while_downloading_follows_the_blob_through_its_rename(tmp_path):
    from pipeline.hub.download import _GrowingFileHasher

    blob, content = tmp_path / "blobs" / "etag", os.urandom(3 * 1024 * 1024 + 5)
    blob.parent.mkdir()
    landed = []
    hasher = _GrowingFileHasher(blob, len(content), landed.append)
    with open(f"{blob}.incomplete", "ab") as f:  # as huggingface_hub writes it: appended, then renamed
        for start in range(0, len(content), 1 << 20):
            f.write(content[start : start + (1 << 20)])
            f.flush()
    os.replace(f"{blob}.incomplete", blob)
    hasher.finish()
    assert hasher.digest_of(blob) == hashlib.sha256(content).hexdigest()
    assert sum(landed) == hasher.reported == len(content)


def test_a_restarted_download_is_not_trusted_to_the_followed_hash(tmp_path):
    from pipeline.hub.download import _GrowingFileHasher

    blob, content = tmp_path / "etag", os.urandom(200_000)
    incomplete = Path(f"{blob}.incomplete")
    incomplete.write_bytes(b"x" * 1000)  # a stale partial from an earlier run
    hasher = _GrowingFileHasher(blob, len(content), lambda n: None)
    while hasher.reported < 1000:
        time.sleep(0.001)
    with open(incomplete, "r+b") as f:  # the server ignored Range: huggingface_hub starts over
        f.truncate(0)
    hasher._thread.join(5)  # it notices the file shrank and stops
    incomplete.write_bytes(content)
    os.replace(incomplete, blob)
    hasher.finish()
    assert hasher.digest_of(blob) is None


def test_a_followed_hash_that_differs_is_checked_again_before_the_file_is_condemned(tmp_path):
    from pipeline.hub.download import verify
    from pipeline.hub.listing import HubFile

    path, content = tmp_path / "weights.safetensors", os.urandom(5000)
    path.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    assert verify(HubFile(path="w", size=5000, sha256=sha), path, sha256="0" * 64) == sha
    assert path.is_file()
