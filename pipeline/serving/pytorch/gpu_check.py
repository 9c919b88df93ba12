"""The PyTorch backend's serving on a GPU host, as its consumers run it: the gpu-selftest's rows.

    python -m pipeline.serving.pytorch.gpu_check RELEASE PROMPT MAX_TOKENS OUT_JSON

A child process (its GPU memory goes with it) that, on a release publish wrote for this backend:
1. loads the checkpoint with the bundle's options, `LLM(model=..., **options)` (what both consumers do);
2. generates greedily once (`llm.generate`), and once streamed (`llm.generate_async(...,
   streaming=True)`, whose last RequestOutput's text must equal the first: the text is cumulative);
3. shuts the LLM down, runs the bundle's own trtllm-serve command (host and port moved to loopback)
   and asks /v1/completions once with the openai client, expecting the same text.
Greedy is top_k=1 (SamplingParams, and trtllm-serve's CompletionRequest extra field top_k).
Each step is a row {name, ok, detail}; a step that raises ends the rows with its error.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.facts import layout
from pipeline.serving.pytorch.llm import read_options
from pipeline.serving.pytorch.release import OPTIONS_FILE, read_command
from pipeline.serving.server import free_port

LOAD, GENERATE, STREAM, OPENAI = (
    "pytorch LLM load",
    "pytorch generate",
    "pytorch generate (streamed)",
    "pytorch trtllm-serve /v1/completions",
)
SERVE_READY_S = 900.0  # trtllm-serve loads the model and captures CUDA graphs before /health answers


def _checkpoint(release: Path) -> Path:
    (checkpoint,) = sorted(p for p in (release / layout.SERVED_CHECKPOINTS).iterdir() if p.is_dir())
    return checkpoint


def llm_rows(release: Path, prompt: str, max_tokens: int, rows: list[dict[str, Any]]) -> str:
    """Rows 1-2 appended to `rows`; returns the greedy text."""
    from tensorrt_llm import LLM, SamplingParams

    options = read_options(release / layout.SERVE_BUNDLE / OPTIONS_FILE)
    t0 = time.perf_counter()
    llm = LLM(model=str(_checkpoint(release)), **options)
    rows.append({"name": LOAD, "ok": True, "detail": f"loaded in {time.perf_counter() - t0:.1f}s"})
    try:
        params = SamplingParams(max_tokens=max_tokens, top_k=1)
        text = llm.generate(prompt, params).outputs[0].text
        rows.append({"name": GENERATE, "ok": bool(text), "detail": repr(text)})

        async def streamed() -> str:
            last = ""
            async for output in llm.generate_async(prompt, params, streaming=True):
                last = output.outputs[0].text
            return last

        got = asyncio.run(streamed())
        detail = repr(got) if got == text else f"expected {text!r}, got {got!r}"
        rows.append({"name": STREAM, "ok": got == text, "detail": detail})
    finally:
        llm.shutdown()
    return text


def serve_argv(release: Path, port: int) -> list[str]:
    argv = list(read_command(release)["argv"])
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        argv[argv.index(flag) + 1] = value
    return argv


def openai_row(release: Path, prompt: str, max_tokens: int, expected: str, log: Path) -> dict[str, Any]:
    from openai import OpenAI

    port = free_port()
    argv = serve_argv(release, port)
    with open(log, "w") as out:
        process = subprocess.Popen(
            argv,
            cwd=release / read_command(release)["cwd"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVE_READY_S
        while True:
            if process.poll() is not None:
                return {
                    "name": OPENAI,
                    "ok": False,
                    "detail": f"trtllm-serve exited {process.returncode} (log: {log})",
                }
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                return {
                    "name": OPENAI,
                    "ok": False,
                    "detail": f"trtllm-serve not ready after {SERVE_READY_S:.0f}s",
                }
            time.sleep(1.0)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        got = (
            client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, extra_body={"top_k": 1}
            )
            .choices[0]
            .text
        )
        detail = repr(got) if got == expected else f"expected {expected!r}, got {got!r}"
        return {"name": OPENAI, "ok": got == expected, "detail": detail}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main(argv: list[str]) -> int:
    release, prompt, max_tokens, out = Path(argv[0]), argv[1], int(argv[2]), Path(argv[3])
    rows: list[dict[str, Any]] = []
    try:
        text = llm_rows(release, prompt, max_tokens, rows)
        rows.append(openai_row(release, prompt, max_tokens, text, out.with_name("trtllm-serve.log")))
    except Exception as exc:  # the row says which step broke; the traceback goes to this child's log
        traceback.print_exc()
        step = (LOAD, GENERATE, STREAM, OPENAI)[min(len(rows), 3)]
        rows.append({"name": step, "ok": False, "detail": f"{type(exc).__name__}: {exc}"})
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
