"""A hostile hub, interrupts and a failing machine, against the real CLI in a subprocess.

Each case must end in one ERROR line (no traceback, no retry noise) with the documented exit code, in
bounded time, and write nothing outside the work dir. The hub is tests/hub_server.py with its fault
hooks; huggingface_hub runs for real. The full-disk cases mount a tiny tmpfs (root only).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock
from hub_server import LISTING, HubServer

REPO_ROOT = Path(__file__).resolve().parent.parent

REPO = "org/tiny"
CASE_TIMEOUT_S = 90  # the slowest case (a 503 retried by huggingface_hub) takes ~25 s
HUB_TIMEOUT_S = "1"  # HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT in the subprocess


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if not line.startswith("TIP")]

    def one_line(self) -> str:
        """The single ERROR line; fails on a traceback or any other noise on stderr."""
        assert "Traceback" not in self.stderr + self.stdout, self.stderr
        assert len(self.error_lines) == 1 and self.error_lines[0].startswith("ERROR "), self.stderr
        return self.error_lines[0]


@dataclass
class Sandbox:
    """tmp_path holds the config, the work dir, HF_HOME and an `outside/` folder with a file in it."""

    root: Path
    work: Path

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    def env(self, hub_url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTEST"))}
        env |= {
            "HF_ENDPOINT": hub_url,
            "HF_HOME": str(self.root / "hf_home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_ETAG_TIMEOUT": HUB_TIMEOUT_S,
            "HF_HUB_DOWNLOAD_TIMEOUT": HUB_TIMEOUT_S,
            "COLUMNS": "400",
        }
        return env | extra

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every file outside the work dir, with its size and mtime."""
        return {
            str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in self.root.rglob("*")
            if p.is_file() and not p.is_relative_to(self.work)
        }


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    sandbox = Sandbox(tmp_path, tmp_path / "work")
    sandbox.outside.mkdir()
    (sandbox.outside / "x.safetensors").write_text("precious")
    return sandbox


def write_config(
    box: Sandbox,
    *model_lines: str,
    name: str = "pipeline.toml",
    gpu: str = "cpu",
    batch: int = 1,
    **sections: dict[str, str],
) -> Path:
    """A config whose data files exist (the repo's calib_data/), with `sections` merged over them."""
    data = REPO_ROOT / "calib_data"
    tables = {
        "calibration": {"dataset": str(data / "offline-mix.jsonl")},
        "gate": {"eval_dataset": str(data / "offline-eval.jsonl"), "prompts": str(data / "prompts.jsonl")},
    }
    for table, values in sections.items():
        tables[table] = tables.get(table, {}) | values
    lines = ["[model]", 'name = "tiny"', *model_lines, f'[target]\ngpu = "{gpu}"', "[[profiles]]"]
    lines += ['name = "p"', f"max_batch_size = {batch}", "max_input_len = 8", "max_seq_len = 16"]
    for table, values in tables.items():
        lines += [f"[{table}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    path = box.root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def hub_config(box: Sandbox) -> Path:
    return write_config(box, 'source = "hub"', f'repo_id = "{REPO}"')


def cli_argv(config: Path, work: Path, stage: str = "fetch") -> list[str]:
    return [sys.executable, "-m", "pipeline", stage, "--config", str(config), "--work-dir", str(work)]


def run_cli(argv: list[str], env: dict[str, str]) -> Outcome:
    t0 = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    return Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - t0)


def check_case(box: Sandbox, before: dict, outcome: Outcome, code: int, *expected: str) -> str:
    line = outcome.one_line()
    assert outcome.code == code, (outcome.code, line)
    for text in expected:
        assert text in line, line
    assert box.snapshot() == before, "a file outside the work dir was written"
    assert not list(box.work.glob("store/**/.tmp-*")), "a temporary folder was left"
    return line


@pytest.fixture
def hub(tiny_model_dir: Path):
    with HubServer() as server:
        server.add_repo(REPO, tiny_model_dir)
        yield server


def _absolute(box, hub, tiny):
    hub.list_as(REPO, str(box.outside / "x.safetensors"), tiny / "model.safetensors")
    return str(box.outside / "x.safetensors")


def _dotdot(box, hub, tiny):
    hub.list_as(REPO, "../../outside/x.safetensors", tiny / "model.safetensors")
    return "../../outside/x.safetensors"


def _backslash(box, hub, tiny):
    hub.list_as(REPO, "..\\outside\\x.safetensors", tiny / "model.safetensors")
    return "..\\\\outside"


def _index_escape(box, hub, tiny):
    index = box.root / "index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../outside/x.safetensors"}}))
    hub.list_as(REPO, "model.safetensors.index.json", index)
    return "model.safetensors.index.json is malformed: it names '../outside/x.safetensors'"


@pytest.mark.parametrize("make", [_absolute, _dotdot, _backslash, _index_escape])
def test_a_file_name_outside_the_repo_fails_before_anything_is_written(box, hub, tiny_model_dir, make):
    expected = make(box, hub, tiny_model_dir)
    config = hub_config(box)
    before = box.snapshot()
    outcome = run_cli(cli_argv(config, box.work), box.env(hub.url))
    check_case(box, before, outcome, 5, "is malformed", expected, "not a relative path inside the repo")
    assert (box.outside / "x.safetensors").read_text() == "precious"
    weights = [r for r in hub.requests if r.method == "GET" and r.path.endswith(".safetensors")]
    assert not weights, "a weights file was downloaded"


HUB_FAULTS = {
    # name: (hook, value, exit code, words the line must hold, the most seconds it may take from the
    # hub's first request to the exit)
    "listing hangs": ("hangs", LISTING, 5, ["did not answer within 1 s", "HF_HUB_ETAG_TIMEOUT"], 15),
    "file stalls": ("hangs", "model.safetensors", 5, ["model.safetensors", "did not answer within 1 s"], 45),
    "file 503": ("statuses", ("model.safetensors", 503), 5, ["answered 503", "the hub is failing"], 60),
    "listing 500": ("statuses", (LISTING, 500), 5, ["answered 500", "the listing of org/tiny@main"], 15),
    "listing 404, no code": ("statuses", (LISTING, 404), 2, ["answered 404", "no such repo or file"], 15),
    "file 404, no code": ("statuses", ("config.json", 404), 2, ["config.json", "answered 404"], 15),
    "listing 400, no code": ("statuses", (LISTING, 400), 2, ["answered 400", "refused the request"], 15),
    "listing 429": ("statuses", (LISTING, 429), 5, ["answered 429", "too many requests"], 15),
    "listing is HTML": ("listing_body", b"<html><body>Sign in</body></html>", 5, ["not JSON", "'<html>"], 15),
    "listing has no commit": ("listing_body", b'{"id": "org/tiny", "siblings": []}', 5, ["no commit"], 15),
}


@pytest.mark.parametrize("fault", list(HUB_FAULTS))
def test_a_failing_hub_is_one_line_in_bounded_time(box, hub, fault):
    hook, value, code, expected, limit_s = HUB_FAULTS[fault]
    if hook == "hangs":
        hub.hangs.add(value)
    elif hook == "statuses":
        hub.statuses[value[0]] = value[1]
    else:
        hub.listing_body = value
    config = hub_config(box)
    before = box.snapshot()
    outcome = run_cli(cli_argv(config, box.work), box.env(hub.url))
    ended = time.monotonic()
    line = check_case(box, before, outcome, code, *expected)
    assert "answered None" not in line
    # From the hub's first request to the exit: the interpreter's start (imports of torch and the rest,
    # several seconds more on a loaded machine) is not what the bound is about, the retries and timeouts are.
    seconds = ended - hub.requests[0].at
    assert seconds < limit_s, f"{fault}: {seconds:.0f} s"
    assert "Retrying" not in outcome.stderr + outcome.stdout  # huggingface_hub's noise goes to the log


def interrupt(box: Sandbox, argv: list[str], env: dict[str, str], signum: int, ready) -> Outcome:
    """Start the CLI, wait until `ready(its stdout so far)`, send `signum`, and collect what it did.
    Its output goes to files outside the sandbox, so that `ready` can read it while it runs."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 60
            while not ready(_written(out)):
                assert process.poll() is None, (_written(out), _written(err))
                assert time.monotonic() < deadline, "the moment to interrupt never came"
                time.sleep(0.05)
            process.send_signal(signum)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return Outcome(process.returncode, _written(out), _written(err), time.monotonic() - t0)


def _written(file) -> str:
    file.seek(0)
    return file.read()


def check_interrupted(box: Sandbox, before: dict, outcome: Outcome, signum: int, *, task_ran: bool) -> None:
    name = signal.Signals(signum).name
    check_case(box, before, outcome, 130 if signum == signal.SIGINT else 143, f"interrupted by {name}")
    lock = FileLock(box.work / ".lock")
    lock.acquire(timeout=0)  # released: acquiring it does not wait
    lock.release()
    report = box.work / "reports" / "run.json"
    if task_ran:
        body = json.loads(report.read_text())
        assert body["exit_code"] == outcome.code and body["error"] == f"interrupted by {name}"
        (task,) = body["tasks"]
        assert task["task"] == "fetch" and task["state"] == "failed"
        assert task["summary"] == f"interrupted by {name}"
    else:
        assert not report.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("moment", ["the listing", "a file download"])
def test_an_interrupted_fetch_exits_128_plus_the_signal(box, hub, signum, moment):
    if moment == "the listing":
        hub.hangs.add(LISTING)
        ready = lambda out: any(r.path.startswith("/api/models/") for r in hub.requests)  # noqa: E731
    else:
        hub.hangs.add("model.safetensors")
        ready = lambda out: bool(hub.gets("model.safetensors"))  # noqa: E731
    config = hub_config(box)
    before = box.snapshot()
    env = box.env(hub.url, HF_HUB_ETAG_TIMEOUT="60", HF_HUB_DOWNLOAD_TIMEOUT="60")
    outcome = interrupt(box, cli_argv(config, box.work), env, signum, ready)
    check_interrupted(box, before, outcome, signum, task_ran=True)


def test_sigint_while_the_tiny_model_trains(box):
    config = write_config(box, 'source = "tiny"', "tiny_train_steps = 100000")
    before = box.snapshot()
    started = lambda out: bool(list(box.work.glob("store/fetch/.tmp-*/model")))  # noqa: E731
    outcome = interrupt(
        box, cli_argv(config, box.work), box.env("http://127.0.0.1:9"), signal.SIGINT, started
    )
    check_interrupted(box, before, outcome, signal.SIGINT, task_ran=True)


def test_sigterm_while_waiting_for_the_lock(box):
    config = write_config(box, 'source = "tiny"', "tiny_train_steps = 2")
    box.work.mkdir()
    held = FileLock(box.work / ".lock")
    held.acquire()
    try:
        before = box.snapshot()
        argv = cli_argv(config, box.work)
        # Signalled once it says it waits (not after a fixed time: a busy machine prints it later).
        outcome = interrupt(
            box,
            argv,
            box.env("http://127.0.0.1:9"),
            signal.SIGTERM,
            lambda out: "waiting for another run" in out,
        )
    finally:
        held.release()
    assert "waiting for another run" in outcome.stdout
    check_interrupted(box, before, outcome, signal.SIGTERM, task_ran=False)


@pytest.fixture
def tmpfs(box: Sandbox):
    """mount(size, read_only=False) -> a fresh tmpfs under the sandbox, unmounted afterwards (root only)."""
    mounted: list[Path] = []

    def mount(size: str, *, read_only: bool = False) -> Path:
        point = box.root / f"disk{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=True)


def tiny_fetch_config(box: Sandbox) -> Path:
    return write_config(box, 'source = "tiny"', "tiny_train_steps = 2")


def fill(folder: Path) -> None:
    """Write until the filesystem holding `folder` is full."""
    try:
        with open(folder / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


@pytest.mark.parametrize("full", ["completely", "after the logs"])
def test_a_full_disk_is_one_line_naming_where_and_exit_5(box, tmpfs, full):
    disk = tmpfs("256k")
    work = box.work = disk / "work"
    (work / "logs" / "fetch").mkdir(parents=True)  # folders take no space on a tmpfs; files do
    if full == "completely":
        fill(disk)
    config = tiny_fetch_config(box)
    before = box.snapshot()
    outcome = run_cli(cli_argv(config, work), box.env("http://127.0.0.1:9"))
    line = outcome.one_line()
    assert outcome.code == 5, line
    assert f"{work / 'store' / 'fetch'}: no space left: the step needed more than the" in line
    assert "is free" in line and "Logging error" not in outcome.stderr
    assert box.snapshot() == before
    assert not list(work.glob("store/**/.tmp-*"))


def publish_config(box: Sandbox, destination: str, name: str) -> Path:
    return write_config(box, 'source = "tiny"', name=name, publish={"destination": destination})


def bad_input_cases(box: Sandbox, tmpfs) -> dict:
    """name -> (argv, the words the line must hold); each must exit 2 before any work."""
    dangling = box.root / "gone-link"
    dangling.symlink_to(box.root / "gone")
    a_file = box.root / "a-file"
    a_file.write_text("not a folder")
    binary = box.root / "binary.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    calib_dir = box.root / "calib-folder"
    calib_dir.mkdir()
    calib = write_config(box, 'source = "tiny"', name="calib.toml", calibration={"dataset": str(calib_dir)})
    empty = publish_config(box, "", "empty.toml")
    link = publish_config(box, str(dangling), "link.toml")
    too_big = write_config(box, 'source = "tiny"', name="too-big.toml", gpu="a100-40gb", batch=1_000_000_000)
    work = box.work
    cases = {
        "work dir is a file": (
            cli_argv(tiny_fetch_config(box), a_file),
            [f"--work-dir {a_file}", "is a file"],
        ),
        "work dir is a dangling link": (
            cli_argv(tiny_fetch_config(box), dangling),
            ["--work-dir", f"{dangling} is a symlink to {box.root / 'gone'}, which does not exist"],
        ),
        "binary config": (cli_argv(binary, work), [f"{binary}: not UTF-8 text"]),
        "calibration data is a folder": (
            cli_argv(calib, work, "run"),
            [f"{calib}: calibration.dataset: {calib_dir} is a folder, not a file"],
        ),
        "empty publish.destination": (
            cli_argv(empty, work, "publish"),
            [f"{empty}: publish.destination: is empty"],
        ),
        "dangling destination": (
            cli_argv(link, work, "publish"),
            [f"{link}: publish.destination: {dangling} is a symlink to"],
        ),
        "profile does not fit": (
            cli_argv(too_big, work, "build"),
            [f"{too_big}: profiles[0]: 'p'", "does not fit"],
        ),
    }
    if tmpfs is not None:
        read_only = tmpfs("64k", read_only=True)
        ro = publish_config(box, str(read_only / "repo"), "ro.toml")
        cases["read-only destination"] = (
            cli_argv(ro, work, "publish"),
            [f"{ro}: publish.destination: {read_only} is not writable"],
        )
    return cases


BAD_INPUTS = [
    "work dir is a file",
    "work dir is a dangling link",
    "binary config",
    "calibration data is a folder",
    "empty publish.destination",
    "dangling destination",
    "profile does not fit",
    "read-only destination",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2_before_any_work(box, tmpfs, case):
    cases = bad_input_cases(box, tmpfs if case == "read-only destination" else None)
    argv, expected = cases[case]
    before = box.snapshot()
    outcome = run_cli(argv, box.env("http://127.0.0.1:9"))
    check_case(box, before, outcome, 2, *expected)
    assert not (box.work / "store").exists(), "a stage ran"


def test_a_stage_log_on_a_full_disk_drops_records_silently(capfd):
    """/dev/full fails every write with ENOSPC: a plain FileHandler prints a traceback per record."""
    import logging

    from pipeline.core.logfile import StageLogHandler

    handler = StageLogHandler(Path("/dev/full"))
    logger = logging.getLogger("pipeline.test.full-disk")
    logger.addHandler(handler)
    try:
        for _ in range(20):
            logger.warning("x" * 10_000)
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert capfd.readouterr().err == ""
