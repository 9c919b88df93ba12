"""Triton's HTTP generate extension: one answer (/generate) or a stream of server-sent events (/generate_stream)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from pipeline.core.errors import StageError

STAGE = "smoke"


def _post(url: str, payload: dict[str, Any], timeout_s: float):
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            message = json.loads(body).get("error", body)
        except json.JSONDecodeError:
            message = body
        raise StageError(STAGE, f"POST {url} -> HTTP {exc.code}: {message.strip()[:300]}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise StageError(STAGE, f"POST {url} failed: {exc}") from None


def generate(
    base_url: str, model: str, payload: dict[str, Any], *, timeout_s: float = 300.0
) -> dict[str, Any]:
    """POST /v2/models/<model>/generate: the JSON keys are the model's input names."""
    with _post(f"{base_url}/v2/models/{model}/generate", payload, timeout_s) as response:
        return json.loads(response.read())


def generate_stream(
    base_url: str, model: str, payload: dict[str, Any], *, timeout_s: float = 300.0
) -> Iterator[dict[str, Any]]:
    """POST /v2/models/<model>/generate_stream: one JSON object per `data:` event, in order."""
    url = f"{base_url}/v2/models/{model}/generate_stream"
    with _post(url, payload, timeout_s) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:") :])
            if "error" in event:
                raise StageError(STAGE, f"POST {url}: the stream reported: {event['error']}")
            yield event
