"""Triton's HTTP generate extension: one answer (/generate) or a stream of server-sent events (/generate_stream).

The one client of the published models' generate endpoints, which the smoke check asks through
(served load is aiperf's: pipeline/bench/aiperf.py). tritonclient has no client for this extension
(its HTTP client speaks /infer, its streaming is gRPC only), so this is a thin layer over
`requests`, a session per client. Every failure (unreachable, an HTTP error, an error event in the stream) is a
StageError naming the URL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.core.errors import StageError

SMOKE = "smoke"


class GenerateClient:
    """A connection to one server's generate endpoints; `stage` names the failures it raises."""

    def __init__(self, base_url: str, *, stage: str, timeout_s: float = 300.0) -> None:
        import requests

        self.base_url = base_url
        self.stage, self.timeout_s = stage, timeout_s
        self._session = requests.Session()

    def __enter__(self) -> GenerateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def generate(self, model: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST /v2/models/<model>/generate: the JSON keys are the model's input names."""
        url = endpoint_url(self.base_url, model, "generate")
        with self._failures(url):
            with self._post(url, payload, stream=False) as response:
                return response.json()

    def generate_stream(self, model: str, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST /v2/models/<model>/generate_stream: one JSON object per `data:` event, as each arrives."""
        url = endpoint_url(self.base_url, model, "generate_stream")
        with self._failures(url):
            with self._post(url, payload, stream=True) as response:
                yield from server_sent_events(response.iter_lines(), stage=self.stage, url=url)

    def _post(self, url: str, payload: dict[str, Any], *, stream: bool):
        response = self._session.post(url, json=payload, stream=stream, timeout=self.timeout_s)
        if response.status_code != 200:
            with response:
                raise StageError(
                    self.stage, f"POST {url} -> HTTP {response.status_code}: {_message(response.text)}"
                )
        return response

    @contextmanager
    def _failures(self, url: str) -> Iterator[None]:
        """Connection failures, timeouts and broken streams as one StageError line."""
        import requests

        try:
            yield
        except requests.RequestException as exc:
            raise StageError(self.stage, f"POST {url}: {type(exc).__name__}: {exc}") from exc


def endpoint_url(base_url: str, model: str, endpoint: str) -> str:
    return f"{base_url.rstrip('/')}/v2/models/{model}/{endpoint}"


def server_sent_events(lines: Iterable[bytes | str], *, stage: str, url: str) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent-event stream (`data: {...}` lines); raises on an error event."""
    for raw in lines:
        line = (raw.decode() if isinstance(raw, bytes) else raw).strip()
        if not line.startswith("data:"):
            continue
        event = json.loads(line[len("data:") :])
        if "error" in event:
            raise StageError(stage, f"POST {url}: the server answered with an error: {event['error']}")
        yield event


def _message(body: str) -> str:
    """Triton's {"error": "..."} body as its message; any other body as it is (both cut to 300 characters)."""
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        parsed = None
    message = parsed.get("error", body) if isinstance(parsed, dict) else body
    return str(message).strip()[:300]


def generate(
    base_url: str, model: str, payload: dict[str, Any], *, timeout_s: float = 300.0
) -> dict[str, Any]:
    """One request to /generate on a connection of its own (the smoke check's)."""
    with GenerateClient(base_url, stage=SMOKE, timeout_s=timeout_s) as client:
        return client.generate(model, payload)


def generate_stream(
    base_url: str, model: str, payload: dict[str, Any], *, timeout_s: float = 300.0
) -> Iterator[dict[str, Any]]:
    """One request to /generate_stream on a connection of its own (the smoke check's)."""
    with GenerateClient(base_url, stage=SMOKE, timeout_s=timeout_s) as client:
        yield from client.generate_stream(model, payload)
