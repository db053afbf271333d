"""Checking a client's Responses request before anything goes upstream.

This is the one boundary for client input on every route (HTTP, the HTTP bridge, the WebSocket relay):
what passes it has the JSON types the deeper code reads (item ids are hashable strings, content parts
are objects, anchors are well-formed ids), so that code can trust it. A malformed request is a 400
naming the parameter, never a 500 or a retriable 502.
"""

from __future__ import annotations

from typing import Any

import orjson

from codexlb.errors import APIError

# Response ids look like `resp_<hex>`; any printable id of a sane length may be one, anything else never is.
MAX_RESPONSE_ID = 256
# Fields of an input item that are strings when present, as the Responses API defines them.
_ITEM_STRINGS = ("type", "id", "role", "call_id", "name", "status", "encrypted_content")
_BODY_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("tools", list, "an array"), ("instructions", str, "a string"), ("include", list, "an array"),
    ("prompt_cache_key", str, "a string"), ("stream", bool, "a boolean"), ("store", bool, "a boolean"),
    ("generate", bool, "a boolean"),
)


def parse_json(body: bytes | bytearray | str) -> dict[str, Any]:
    """A JSON object we can also send on, or a 400 saying why not."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        detail = "invalid UTF-8" if "utf-8" in str(exc).lower() else "malformed JSON"
        raise APIError(400, f"We could not parse the JSON body of your request ({detail}).",
                       code="invalid_json") from None
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_type")
    try:
        # orjson reads deeper nesting than it writes: what it cannot write could never go upstream.
        orjson.dumps(payload)
    except orjson.JSONEncodeError:
        raise APIError(400, "The JSON body of your request is nested too deeply.", code="invalid_json") from None
    return payload


def _type_error(key: str, expected: str, value: Any) -> APIError:
    got = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
           float: "a number", type(None): "null"}.get(type(value), "a value")
    return APIError(400, f"Invalid type for '{key}': expected {expected}, but got {got} instead.",
                    code="invalid_type", param=key)


def _check_item(where: str, item: Any) -> None:
    if not isinstance(item, dict):
        raise _type_error(where, "an object", item)
    for key in _ITEM_STRINGS:
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise _type_error(f"{where}.{key}", "a string", value)
    content = item.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _type_error(f"{where}.content", "a string or an array", content)
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise _type_error(f"{where}.content[{j}]", "an object", part)
        if part.get("type") is not None and not isinstance(part["type"], str):
            raise _type_error(f"{where}.content[{j}].type", "a string", part["type"])


def well_formed_response_id(value: str) -> bool:
    return 0 < len(value) <= MAX_RESPONSE_ID and value.isprintable() and not any(c.isspace() for c in value)


def check_request(payload: dict[str, Any]) -> dict[str, Any]:
    """A Responses request (an HTTP body or a WebSocket `response.create`) with the types codexlb reads,
    its `input` as a list of items."""
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
        _check_item(f"input[{i}]", item)
    for key, kinds, expected in _BODY_TYPES:
        value = payload.get(key)
        if value is not None and not isinstance(value, kinds):
            raise _type_error(key, expected, value)
    for i, tool in enumerate(payload.get("tools") or ()):
        if not isinstance(tool, dict):
            raise _type_error(f"tools[{i}]", "an object", tool)
        if tool.get("type") is not None and not isinstance(tool["type"], str):
            raise _type_error(f"tools[{i}].type", "a string", tool["type"])
    for i, name in enumerate(payload.get("include") or ()):
        if not isinstance(name, str):
            raise _type_error(f"include[{i}]", "a string", name)
    previous = payload.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str):
            raise _type_error("previous_response_id", "a string", previous)
        if not well_formed_response_id(previous):
            # Such an id can never be found: a 400 now, not the retriable 502 an unknown anchor earns.
            raise APIError(400, "Invalid 'previous_response_id': expected the id of a response (1 to "
                           f"{MAX_RESPONSE_ID} printable characters, no spaces).", code="invalid_value",
                           param="previous_response_id")
    return {**payload, "input": items}


def check_frame(text: str) -> dict[str, Any]:
    """A client's WebSocket frame: a `response.create`, the only message the Responses socket takes."""
    payload = parse_json(text)
    if payload.get("type") != "response.create":
        raise APIError(400, "Unsupported message type: expected 'response.create'.", code="invalid_value",
                       param="type")
    return check_request(payload)


def check_responses(payload: dict[str, Any]) -> dict[str, Any]:
    """An HTTP Responses request made fit for the Codex backend: streamed and not stored, as it requires."""
    return {**check_request(payload), "stream": True, "store": False}
