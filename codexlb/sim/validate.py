"""Request checks with the backend's 400 answers: bad input is never a 500."""

from __future__ import annotations

from typing import Any

import orjson

from codexlb.sim.errors import SimError, bad_request

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}


def _kind(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a value")


def _expect(payload: dict[str, Any], key: str, kinds: tuple[type, ...], expected: str) -> None:
    value = payload.get(key)
    if value is None:
        return
    # bool is an int in Python, never in JSON.
    if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
        return
    raise bad_request(f"Invalid type for '{key}': expected {expected}, but got {_kind(value)} instead.",
                      "invalid_type", key)


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request(
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.",
            "invalid_json",
        ) from None
    if not isinstance(payload, dict):
        raise bad_request(f"Invalid request body: expected an object, but got {_kind(payload)} instead.",
                          "invalid_type")
    return payload


def check_payload(payload: dict[str, Any], models: frozenset[str], *, http: bool) -> list[Any]:
    """Validate a Responses request; returns its input as a list of items."""
    model = payload.get("model")
    if model is None:
        raise bad_request("Missing required parameter: 'model'.", "missing_required_parameter", "model")
    _expect(payload, "model", (str,), "a string")
    _expect(payload, "input", (list, str), "an array")
    _expect(payload, "tools", (list,), "an array")
    _expect(payload, "include", (list,), "an array")
    _expect(payload, "previous_response_id", (str,), "a string")
    _expect(payload, "instructions", (str,), "a string")
    _expect(payload, "stream", (bool,), "a boolean")
    _expect(payload, "store", (bool,), "a boolean")
    _expect(payload, "generate", (bool,), "a boolean")
    if model not in models:
        raise bad_request(f"The '{model}' model is not supported when using Codex with a ChatGPT account.",
                          "model_not_supported", "model")
    if http and payload.get("stream") is not True:
        raise bad_request("Stream must be set to true", "invalid_value", "stream")
    if payload.get("store") is True:
        raise bad_request("Store must be set to false", "invalid_value", "store")
    raw = payload.get("input")
    items: list[Any]
    if raw is None:
        items = []
    elif isinstance(raw, str):
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    else:
        items = raw
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad_request(f"Invalid type for 'input[{i}]': expected an object, but got {_kind(item)} instead.",
                              "invalid_type", f"input[{i}]")
        if not isinstance(item.get("type", "message"), str):
            raise bad_request(f"Invalid type for 'input[{i}].type': expected a string.", "invalid_type",
                              f"input[{i}].type")
    return items


def check_ws_frame(payload: dict[str, Any]) -> None:
    kind = payload.get("type")
    if kind != "response.create":
        raise SimError(400, f"Unsupported message type: {kind!r}. Expected 'response.create'.",
                       code="invalid_value", param="type")
