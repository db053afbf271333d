"""Reading and checking a client's Responses request before anything goes upstream."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from codexlb.errors import APIError
from codexlb.request_body import read_body


async def read_json(request: web.Request, max_bytes: int, *, too_large_status: int) -> dict[str, Any]:
    """The body as a JSON object, or the 4xx the client should get.

    `too_large_status` is 400 for the Codex CLI, which retries a 413 although the payload can never fit.
    """
    body = await read_body(request, max_bytes, _too_large(max_bytes, too_large_status))
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        detail = "invalid UTF-8" if "utf-8" in str(exc).lower() else "malformed JSON"
        raise APIError(400, f"We could not parse the JSON body of your request ({detail}).",
                       code="invalid_json") from None
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_type")
    return payload


def _too_large(max_bytes: int, status: int) -> APIError:
    return APIError(status, f"Request body is larger than {max_bytes // (1024 * 1024)} MiB, the most this proxy "
                    "accepts; start a new conversation or compact it.", code="payload_too_large",
                    type="invalid_request_error")


def _type_error(key: str, expected: str, value: Any) -> APIError:
    got = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
           float: "a number", type(None): "null"}.get(type(value), "a value")
    return APIError(400, f"Invalid type for '{key}': expected {expected}, but got {got} instead.",
                    code="invalid_type", param=key)


def check_responses(payload: dict[str, Any]) -> dict[str, Any]:
    """A Responses request made fit for the Codex backend: streamed and not stored, as it requires."""
    model = payload.get("model")
    if model is None:
        raise APIError(400, "Missing required parameter: 'model'.", code="missing_required_parameter", param="model")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a string", model)
    if "input" not in payload:
        raise APIError(400, "Missing required parameter: 'input'.", code="missing_required_parameter", param="input")
    items = payload["input"]
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": items}]}]
    if not isinstance(items, list):
        raise _type_error("input", "an array", items)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _type_error(f"input[{i}]", "an object", item)
    for key, kinds, expected in (("tools", list, "an array"), ("previous_response_id", str, "a string"),
                                 ("instructions", str, "a string"), ("include", list, "an array")):
        value = payload.get(key)
        if value is not None and not isinstance(value, kinds):
            raise _type_error(key, expected, value)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    return {**payload, "input": items, "stream": True, "store": False}
