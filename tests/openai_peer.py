"""A minimal OpenAI-compatible endpoint on 127.0.0.1: the peer `bench --compare` measures in tests.

It stands in for a peer server such as `vllm serve` or `trtllm-serve`, which this
machine cannot run. It is not a model: it answers every request with `max_tokens`
copies of one fixed word, one streamed chunk each, `token_delay_s` apart, so its
figures measure the HTTP path and its own pacing, nothing else. The wire format
follows OpenAI's API reference (openai/openai-openapi, openapi.yaml at
578000861507cd19620e3f1092adf62303757c0a: CreateCompletionResponse, streamed as
server-sent events of the same object; CreateChatCompletionStreamResponse, object
"chat.completion.chunk", the first delta carrying the role; `data: [DONE]` ends a
stream; with stream_options.include_usage a last chunk with empty choices carries
`usage`), which is also what aiperf 0.13.0 parses (aiperf/endpoints/openai_chat.py,
openai_completions.py in the aiperf-0.13.0 wheel).

Run it by hand to compare against it: `python tests/openai_peer.py --port 8100`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORD = " token"
MODEL = "openai-peer"


def _chunk(kind: str, index: int, text: str | None, finish: str | None, role: bool) -> dict[str, Any]:
    if kind == "chat":
        delta: dict[str, str] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {
        "id": f"peer-{index}",
        "object": obj,
        "created": int(time.time()),
        "model": MODEL,
        "choices": [choice],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    token_delay_s = 0.002

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: tests read their own output
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(
                200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]}
            )
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        routes = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
        kind = routes.get(self.path.rstrip("/"))
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if kind is None:
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        usage = {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}
        if not body.get("stream"):
            time.sleep(self.token_delay_s * tokens)
            answer = _chunk(kind, 0, WORD * tokens, "length", role=True)
            if kind == "chat":
                answer["object"] = "chat.completion"
                answer["choices"][0] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": WORD * tokens},
                    "finish_reason": "length",
                }
            else:
                answer["object"] = "text_completion"
            self._json(200, {**answer, "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for i in range(tokens):
            time.sleep(self.token_delay_s)
            finish = "length" if i == tokens - 1 else None
            self._event(_chunk(kind, i, WORD, finish, role=i == 0))
        if (body.get("stream_options") or {}).get("include_usage"):
            last = _chunk(kind, tokens, None, None, role=False)
            self._event({**last, "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _event(self, body: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(body).encode() + b"\n\n")
        self.wfile.flush()


@contextmanager
def serving(port: int = 0, token_delay_s: float = 0.002):
    """A peer on 127.0.0.1 in a background thread; yields its base URL."""
    handler = type("PacedHandler", (Handler,), {"token_delay_s": token_delay_s})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="openai-peer", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--token-delay-ms", type=float, default=2.0)
    args = parser.parse_args()
    with serving(args.port, args.token_delay_ms / 1000) as url:
        print(f"OpenAI-compatible peer at {url}/v1 (model {MODEL}); Ctrl-C stops it", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
