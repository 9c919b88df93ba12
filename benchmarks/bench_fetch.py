"""Fetch speed: >= 1 GB from a local hub stand-in, against huggingface_hub's own `hf download`.

Both download the same files from the same server (tests/hub_server.py in its
own process) into fresh caches, alternating, in the same run; the figure is
the ratio of median wall times, CLI against CLI (goal <= 1.1: verifying every
byte must cost next to nothing). Then an unchanged re-run of
`trtllm-pipeline fetch` (goal < 1 s: the executor skips it).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "bench/model"
SHARDS = 4
SHARD_BYTES = 300_000_000  # 1.2 GB in all
ROUNDS = 3


def _write_model(folder: Path) -> int:
    """A safetensors-shaped model: config, tokenizer, an index and random-filled shards."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["MistralForCausalLM"], "hidden_size": 4096})
    )
    (folder / "tokenizer.json").write_text(
        json.dumps({"model": {"vocab": {f"t{i}": i for i in range(5000)}}})
    )
    weight_map = {}
    for i in range(1, SHARDS + 1):
        name = f"model-{i:05d}-of-{SHARDS:05d}.safetensors"
        tensor = f"layers.{i}.weight"
        weight_map[tensor] = name
        payload = SHARD_BYTES - 4096
        header = json.dumps(
            {tensor: {"dtype": "U8", "shape": [payload], "data_offsets": [0, payload]}}
        ).encode()
        header += b" " * (4096 - 8 - len(header))
        with open(folder / name, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            for _ in range(payload // (1 << 24)):
                f.write(os.urandom(1 << 24))
            f.write(os.urandom(payload % (1 << 24)))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return sum(p.stat().st_size for p in folder.iterdir())


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds (user + system) of the command: steadier on a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    bin_dir = Path(sys.executable).parent
    hf_cli = bin_dir / "hf" if (bin_dir / "hf").exists() else bin_dir / "huggingface-cli"
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        root = Path(tmp)
        total = _write_model(root / "source")
        server = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "tests" / "hub_server.py"), REPO_ID, str(root / "source")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            with urllib.request.urlopen(f"{url}/api/models/{REPO_ID}") as response:
                commit = json.load(response)["sha"]
            env = dict(
                os.environ, HF_ENDPOINT=url, HF_HOME=str(root / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1"
            )
            env.pop("HF_TOKEN", None)
            config = root / "bench.toml"
            config.write_text(
                f'[model]\nname = "bench"\nsource = "hub"\nrepo_id = "{REPO_ID}"\nrevision = "{commit}"\n\n'
                '[target]\ngpu = "cpu"\n\n'
                '[[profiles]]\nname = "p"\nmax_batch_size = 1\nmax_input_len = 8\nmax_seq_len = 16\n'
            )
            pipeline_cli = [str(bin_dir / "trtllm-pipeline"), "fetch", "--config", str(config)]
            hf_argv = [str(hf_cli), "download", REPO_ID, "--revision", commit, "--quiet"]
            hf_times, ours = [], []
            for i in range(ROUNDS):
                hf_times.append(_timed([*hf_argv, "--cache-dir", str(root / f"hf-{i}")], env))
                shutil.rmtree(root / f"hf-{i}")
                ours.append(_timed([*pipeline_cli, "--work-dir", str(root / f"work-{i}")], env))
                if i < ROUNDS - 1:
                    shutil.rmtree(root / f"work-{i}")
            rerun = [
                _timed([*pipeline_cli, "--work-dir", str(root / f"work-{ROUNDS - 1}")], env) for _ in range(3)
            ]
        finally:
            server.terminate()
            server.wait()
    hf_wall, ours_wall = (statistics.median(t for t, _ in runs) for runs in (hf_times, ours))
    hf_cpu, ours_cpu = (statistics.median(c for _, c in runs) for runs in (hf_times, ours))
    print(
        f"download of {total / 1e9:.2f} GB ({SHARDS} shards + config, tokenizer, index) from {url}, {ROUNDS} rounds"
    )
    for label, runs in (("hf download", hf_times), ("trtllm-pipeline fetch", ours)):
        walls = ", ".join(f"{t:.2f}" for t, _ in runs)
        cpus = statistics.median(c for _, c in runs)
        print(
            f"  {label:22s} wall median {statistics.median(t for t, _ in runs):.2f}s ({walls}); cpu {cpus:.2f}s"
        )
    print(
        f"  ratio fetch / hf download: wall {ours_wall / hf_wall:.2f} (goal <= 1.1), cpu {ours_cpu / hf_cpu:.2f}"
    )
    print("  (fetch also checks every file's sha256 or git blob id, which hf download does not)")
    print(
        f"unchanged re-run of trtllm-pipeline fetch: best {min(t for t, _ in rerun):.2f}s of 3 (goal < 1 s)"
    )
