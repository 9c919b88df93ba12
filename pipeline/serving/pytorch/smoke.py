"""The smoke check of a PyTorch-backend release: both consumers, driven by real clients, on the CPU.

- Triton's llmapi repository on the bundled tritonserver: every prompt through
  /v2/models/tensorrt_llm/generate; the first also with the model's default (the prompt echoed in
  text_output), streamed through /generate_stream, and streamed with tritonclient's gRPC client.
- The trtllm-serve bundle: its own command.json argv, run by the CPU stand-in, driven by the
  `openai` client: /v1/models, /v1/completions and /v1/chat/completions, each whole and streamed.

Every answer must equal the reference runtime's greedy answer for the same checkpoint, decoded as
the LLM API decodes (pipeline.serving.pytorch.llm); chat prompts are built independently with the
tokenizer's own apply_chat_template.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import StageError
from pipeline.core.reporter import Reporter
from pipeline.facts import layout
from pipeline.serving.client import generate, generate_stream
from pipeline.serving.models.tensornames import LlmApi
from pipeline.serving.pytorch.llm import StandInLLM, read_options
from pipeline.serving.pytorch.release import MODEL_NAME, MODEL_YAML, OPTIONS_FILE, read_command
from pipeline.serving.server import TritonInstall, TritonServer, free_port
from pipeline.serving.smoke_report import SmokeCheck, SmokeReport

if TYPE_CHECKING:
    from pipeline.gate.verdict import TaskResult
    from pipeline.serving.task_check import ServedTasks

STAGE = "smoke"


def release_llm(release: Path) -> tuple[StandInLLM, str]:
    """The reference runtime over the release's checkpoint, with the bundle's options; and the
    model's name (its checkpoint folder's)."""
    (checkpoint,) = sorted(p for p in (release / layout.SERVED_CHECKPOINTS).iterdir() if p.is_dir())
    options = read_options(release / layout.SERVE_BUNDLE / OPTIONS_FILE)
    return StandInLLM(checkpoint, options), checkpoint.name


def _greedy(llm: StandInLLM, ids: list[int], max_tokens: int) -> list[int]:
    return llm.generate(ids, max_tokens=max_tokens).token_ids


def chat_ids(llm: StandInLLM, prompt: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    return list(llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def ask_llmapi(
    url: str, grpc_url: str | None, llm: StandInLLM, prompts: list[str], *, max_tokens: int, decoupled: bool
) -> list[SmokeCheck]:
    checks = []
    answers = {}
    for prompt in prompts:
        ids = llm.encode(prompt)
        answers[prompt] = (ids, _greedy(llm, ids, max_tokens))
        payload = {LlmApi.TEXT_INPUT: prompt, LlmApi.MAX_TOKENS: max_tokens, LlmApi.EXCLUDE_INPUT: True}
        got = generate(url, MODEL_NAME, payload)[LlmApi.TEXT_OUTPUT]
        checks.append(SmokeCheck("llmapi/generate", prompt, llm.decode(answers[prompt][1]), got))
    first = prompts[0]
    ids, tokens = answers[first]
    # Left at its default, exclude_input_from_output is False: the answer starts with the prompt.
    got = generate(url, MODEL_NAME, {LlmApi.TEXT_INPUT: first, LlmApi.MAX_TOKENS: max_tokens})[
        LlmApi.TEXT_OUTPUT
    ]
    checks.append(SmokeCheck("llmapi/generate (prompt echoed)", first, llm.decode(ids + tokens), got))
    if not decoupled:
        return checks
    expected = llm.decode(tokens)
    payload = {
        LlmApi.TEXT_INPUT: first,
        LlmApi.MAX_TOKENS: max_tokens,
        LlmApi.EXCLUDE_INPUT: True,
        LlmApi.STREAMING: True,
    }
    texts = [event[LlmApi.TEXT_OUTPUT] for event in generate_stream(url, MODEL_NAME, payload)]
    checks.append(
        SmokeCheck("llmapi/generate_stream", first, expected, _cumulative(texts, "generate_stream"))
    )
    if grpc_url is not None:
        checks.append(
            SmokeCheck(
                "llmapi grpc stream (tritonclient)",
                first,
                expected,
                _grpc_stream(grpc_url, first, max_tokens),
            )
        )
    return checks


def _cumulative(texts: list[str], route: str) -> str:
    """The last of a stream of cumulative texts (each the whole text so far, as upstream sends
    RequestOutput.text); a text that does not extend the one before is a broken stream."""
    for before, after in zip(texts, texts[1:], strict=False):
        if not after.startswith(before):
            raise StageError(STAGE, f"{route}: streamed text {after!r} does not extend {before!r}")
    return texts[-1] if texts else ""


def _grpc_stream(grpc_url: str, prompt: str, max_tokens: int) -> str:
    """The llmapi model streamed over gRPC by tritonclient (decoupled models stream only there)."""
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    def tensor(name: str, value, dtype: str):
        t = grpcclient.InferInput(name, [1], dtype)
        t.set_data_from_numpy(np.array([value], dtype=object if dtype == "BYTES" else None))
        return t

    inputs = [
        tensor(LlmApi.TEXT_INPUT, prompt.encode(), "BYTES"),
        tensor(LlmApi.MAX_TOKENS, np.int32(max_tokens), "INT32"),
        tensor(LlmApi.EXCLUDE_INPUT, True, "BOOL"),
        tensor(LlmApi.STREAMING, True, "BOOL"),
    ]
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer(MODEL_NAME, inputs, enable_empty_final_response=True)
        texts = []
        while True:
            result, error = results.get(timeout=300)
            if error is not None:
                raise StageError(STAGE, f"llmapi gRPC stream: {error}")
            response = result.get_response()
            output = result.as_numpy(LlmApi.TEXT_OUTPUT)
            if output is not None:
                texts.append(output.reshape(-1)[0].decode())
            if response.parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    return _cumulative(texts, "llmapi gRPC stream")


def ask_openai(
    base_url: str, model: str, llm: StandInLLM, prompts: list[str], *, max_tokens: int
) -> list[SmokeCheck]:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    checks = [SmokeCheck("openai /v1/models", "", model, ",".join(m.id for m in client.models.list().data))]
    sampling = {"model": model, "max_tokens": max_tokens, "temperature": 0.0}
    for prompt in prompts:
        want = llm.decode(_greedy(llm, llm.encode(prompt), max_tokens))
        got = client.completions.create(prompt=prompt, **sampling).choices[0].text
        checks.append(SmokeCheck("openai /v1/completions", prompt, want, got))
    first = prompts[0]
    want = llm.decode(_greedy(llm, llm.encode(first), max_tokens))
    stream = client.completions.create(prompt=first, stream=True, **sampling)
    checks.append(
        SmokeCheck(
            "openai /v1/completions (stream)",
            first,
            want,
            "".join(c.choices[0].text for c in stream if c.choices),
        )
    )
    want = llm.decode(_greedy(llm, chat_ids(llm, first), max_tokens))
    messages = [{"role": "user", "content": first}]
    got = client.chat.completions.create(messages=messages, **sampling).choices[0].message.content
    checks.append(SmokeCheck("openai /v1/chat/completions", first, want, got or ""))
    stream = client.chat.completions.create(messages=messages, stream=True, **sampling)
    pieces = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    checks.append(SmokeCheck("openai /v1/chat/completions (stream)", first, want, pieces))
    return checks


def serve_argv(release: Path, *, port: int, python: str = sys.executable) -> list[str]:
    """The bundle's trtllm-serve argv, run by the CPU stand-in on loopback at `port`."""
    argv = list(read_command(release)["argv"])
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        argv[argv.index(flag) + 1] = value
    return [python, "-m", "pipeline.serving.pytorch.openai_server", *argv[1:]]


class OpenAIServer:
    """The stand-in trtllm-serve in a child process, from the release's own command."""

    def __init__(self, release: Path, *, work_dir: Path) -> None:
        self.release, self.work_dir = release, work_dir
        self.port = free_port()
        self.log_path = work_dir / "trtllm-serve.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OpenAIServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        argv = serve_argv(self.release, port=self.port)
        cwd = self.release / read_command(self.release)["cwd"]
        with open(self.log_path, "w") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            self.process = subprocess.Popen(
                argv,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
                start_new_session=True,
            )
        try:
            self._wait_ready(120.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StageError(
                    STAGE,
                    f"the trtllm-serve stand-in exited with code {self.process.returncode}",
                    log=self.log_path,
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise StageError(
            STAGE, f"the trtllm-serve stand-in not ready after {timeout_s:.0f}s", log=self.log_path
        )

    def __exit__(self, *exc_info: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_release_smoke(
    release: Path,
    prompts: list[str],
    *,
    max_tokens: int,
    work_dir: Path,
    reporter: Reporter,
    install: TritonInstall | None = None,
    tasks: ServedTasks | None = None,
    gated: dict[str, TaskResult] | None = None,
) -> SmokeReport:
    """Serve `release` (a copy the servers may write into: serving_view) both ways and check every answer;
    with `tasks`, score them through trtllm-serve against their `gated` scores."""
    llm, model = release_llm(release)
    model_yaml = read_options(release / layout.LLMAPI_REPOSITORY / MODEL_NAME / "1" / MODEL_YAML)
    decoupled = bool(model_yaml["triton_config"]["decoupled"])
    report = SmokeReport(release)
    started = time.perf_counter()
    with TritonServer(
        release / layout.LLMAPI_REPOSITORY,
        work_dir=work_dir / "triton",
        install=install,
        grpc_port=free_port(),
    ) as server:
        report.startup_s = time.perf_counter() - started
        reporter.info(f"tritonserver (llmapi) ready at {server.url} (log: {server.log_path})")
        report.checks += ask_llmapi(
            server.url, server.grpc_url, llm, prompts, max_tokens=max_tokens, decoupled=decoupled
        )
    with OpenAIServer(release, work_dir=work_dir / "openai") as openai_server:
        reporter.info(f"trtllm-serve stand-in ready at {openai_server.url} (log: {openai_server.log_path})")
        report.checks += ask_openai(openai_server.url, model, llm, prompts, max_tokens=max_tokens)
        if tasks is not None and gated is not None:
            from pipeline.serving.task_check import check_served_tasks, openai_completion

            reporter.info(f"scoring {', '.join(t.name for t in tasks.tasks)} through trtllm-serve")
            report.tasks = check_served_tasks(
                openai_completion(openai_server.url, model),
                gated,
                tasks,
                tokenizer=llm.tokenizer,
                limits=llm.limits,
            )
    return report
