"""The CPU's stand-in for `trtllm-serve`: an OpenAI-compatible server over the reference runtime.

    python -m pipeline.serving.pytorch.openai_server MODEL --backend pytorch \\
        --extra_llm_api_options FILE --host HOST --port PORT

It takes the argv a release's trtllm-serve/command.json records (argv[0] aside), so the smoke check
runs the bundle's own command. Routes, request fields and response shapes are trtllm-serve's
(TensorRT-LLM tensorrt_llm/serve/openai_server.py @ 00057725 and openai_protocol.py @ 0076e939, both
adapted from vLLM's protocol; 1.2.1's files are not in the stored index, so the fields relied on here
are the long-standing ones):
- GET /health: 200 with an empty body; GET /v1/models: a ModelList of one ModelCard whose id is the
  checkpoint folder's name (OpenAIServer sets self.model = Path(model).name for a folder),
  owned_by "tensorrt_llm";
- POST /v1/completions: CompletionResponse (id "cmpl-...", object "text_completion", choices with
  text and finish_reason, usage); stream=true sends CompletionStreamResponse chunks as server-sent
  events, then a usage chunk when stream_options.include_usage, then `data: [DONE]`;
  add_special_tokens defaults to True;
- POST /v1/chat/completions: the checkpoint's chat template with the generation prompt, then
  tokenized with add_special_tokens False (its default: the template adds BOS); ChatCompletionResponse
  (id "chatcmpl-...", object "chat.completion", choices[].message {role assistant, content});
  streamed as "chat.completion.chunk"s whose first delta carries the role;
- request models forbid unknown fields (OpenAIBaseModel: extra="forbid"); a bad request is HTTP 400
  with an ErrorResponse {object "error", message, type, param, code}.

Sampling the reference runtime lacks (n > 1, top_p < 1, penalties, stop strings, logprobs, echo,
suffix) is refused with a 400 naming the field, never ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

OWNED_BY = "tensorrt_llm"
DONE = "data: [DONE]\n\n"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int = 0
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: Any = None
    user: str | None = None
    # trtllm-serve's own sampling field (CompletionRequest @ 0076e939): generate max_tokens whatever the
    # model says; load generators (aiperf) send it so every request writes the same number of tokens.
    ignore_eos: bool = False

    def refused(self) -> str | None:
        """The first field the stand-in cannot honour, as `name=value`, or None."""
        checks = {
            "n": self.n == 1,
            "top_p": self.top_p in (None, 1.0),
            "stop": not self.stop,
            "frequency_penalty": self.frequency_penalty in (None, 0.0),
            "presence_penalty": self.presence_penalty in (None, 0.0),
            "logprobs": self.logprobs in (None, False),
        }
        bad = next((name for name, ok in checks.items() if not ok), None)
        return None if bad is None else f"{bad}={getattr(self, bad)!r}"


class CompletionRequest(_Request):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    add_special_tokens: bool = True

    def refused(self) -> str | None:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            return f"prompt: {len(self.prompt)} prompts (one per request)"
        if self.echo or self.suffix:
            return "echo" if self.echo else "suffix"
        return super().refused()


class ChatCompletionRequest(_Request):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True

    def refused(self) -> str | None:
        if not self.add_generation_prompt:
            return "add_generation_prompt=False"
        return super().refused()


def error_body(message: str, *, status: int = 400, kind: str = "BadRequestError") -> dict[str, Any]:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": status}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


class OpenAIStandIn:
    """The server's state: one StandInLLM and the name /v1/models gives it."""

    def __init__(self, llm: Any, model: str) -> None:
        self.llm = llm
        self.model = model

    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def health(self, request):
        from aiohttp import web

        return web.Response(status=200)

    async def models(self, request):
        from aiohttp import web

        card = {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": OWNED_BY}
        return web.json_response({"object": "list", "data": [card]})

    async def _parse(self, request, model: type[_Request]) -> _Request | Any:
        from aiohttp import web

        try:
            body = model.model_validate(await request.json())
        except (ValidationError, json.JSONDecodeError, ValueError) as exc:
            return web.json_response(error_body(str(exc)), status=400)
        refused = body.refused()
        if refused is not None:
            return web.json_response(error_body(f"{refused}: not supported by the CPU stand-in"), status=400)
        return body

    async def completions(self, request):
        from aiohttp import web

        body = await self._parse(request, CompletionRequest)
        if isinstance(body, web.StreamResponse):
            return body
        prompt = body.prompt[0] if isinstance(body.prompt, list) else body.prompt
        ids = self.llm.encode(prompt, add_special_tokens=body.add_special_tokens)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = self.model

        def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
            return {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }

        return await self._answer(request, body, ids, head, choice)

    async def chat(self, request):
        from aiohttp import web

        body = await self._parse(request, ChatCompletionRequest)
        if isinstance(body, web.StreamResponse):
            return body
        try:
            prompt = self.llm.chat_prompt(body.messages)
        except Exception as exc:  # a template that rejects the messages: the client's error
            return web.json_response(error_body(str(exc)), status=400)
        ids = self.llm.encode(prompt, add_special_tokens=body.add_special_tokens)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model}
        first = [True]

        def choice(text: str, finish_reason: str | None, *, whole: bool = False) -> dict[str, Any]:
            if whole:
                return {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            delta: dict[str, Any] = {"content": text}
            if first[0]:
                delta, first[0] = {"role": "assistant", "content": text}, False
            return {"index": 0, "delta": delta, "finish_reason": finish_reason}

        if body.max_completion_tokens is not None:
            body = body.model_copy(update={"max_tokens": body.max_completion_tokens})
        return await self._answer(request, body, ids, head, choice, chat=True)

    async def _answer(self, request, body: _Request, ids: list[int], head, choice, *, chat: bool = False):
        from aiohttp import web

        loop = asyncio.get_running_loop()
        options = dict(
            max_tokens=body.max_tokens,
            temperature=body.temperature or 0.0,
            top_k=body.top_k,
            seed=body.seed or 0,
            ignore_eos=body.ignore_eos,
        )
        if not body.stream:
            try:
                done = await loop.run_in_executor(None, lambda: self.llm.generate(ids, **options))
            except Exception as exc:
                return web.json_response(error_body(str(exc)), status=400)
            whole = {"whole": True} if chat else {}
            kind = {"object": "chat.completion"} if chat else {}
            return web.json_response(
                {
                    **head,
                    **kind,
                    "choices": [choice(done.text, done.finish_reason, **whole)],
                    "usage": usage(len(ids), len(done.token_ids)),
                }
            )
        queue: asyncio.Queue = asyncio.Queue()

        def step(completion) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (completion.text_diff, completion.finish_reason))

        def run() -> Any:
            try:
                return self.llm.generate(ids, on_step=step, **options)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk_kind = {"object": "chat.completion.chunk"} if chat else {}
        job = loop.run_in_executor(None, run)
        while (item := await queue.get()) is not None:
            text, finish_reason = item
            await response.write(
                sse({**head, **chunk_kind, "choices": [choice(text, finish_reason)]}).encode()
            )
        try:
            done = await job
        except Exception as exc:
            await response.write(
                sse({"error": error_body(str(exc), status=500, kind="InternalServerError")}).encode()
            )
        else:
            if (body.stream_options or {}).get("include_usage"):
                tail = {**head, **chunk_kind, "choices": [], "usage": usage(len(ids), len(done.token_ids))}
                await response.write(sse(tail).encode())
        await response.write(DONE.encode())
        await response.write_eof()
        return response


def parse_args(argv: list[str]) -> argparse.Namespace:
    """trtllm-serve's own option names (tensorrt_llm/commands/serve.py), the ones a bundle uses."""
    parser = argparse.ArgumentParser(prog="trtllm-serve (CPU stand-in)")
    parser.add_argument("model")
    parser.add_argument("--backend", choices=["pytorch"], default="pytorch")
    parser.add_argument("--extra_llm_api_options", "--config", dest="extra_llm_api_options", required=True)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from aiohttp import web

    from pipeline.serving.pytorch.llm import StandInLLM

    args = parse_args(argv)
    checkpoint = Path(args.model)
    llm = StandInLLM.from_files(checkpoint, Path(args.extra_llm_api_options))
    server = OpenAIStandIn(llm, checkpoint.name if checkpoint.is_dir() else args.model)
    web.run_app(server.app(), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
