"""OpenAI Chat Completions on top of the Codex Responses backend.

- `chat_to_responses(body)`: a Chat Completions request → a Responses request upstream accepts.
- `ChatStream`: Responses events → `chat.completion.chunk` objects, one event at a time.
- `aggregate_chat(events)`: a whole Responses event stream → one `chat.completion` object.
- `sse_chunk(obj)` / `DONE`: the chat SSE framing (`data: {json}\\n\\n`, `data: [DONE]\\n\\n`).

Pure: no I/O. Bad client input raises `TranslationError` (never KeyError/TypeError); an upstream
failure raises `UpstreamFailed`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import orjson

from codexlb.translate.errors import TranslationError, UpstreamFailed, failure_of, stream_incomplete

__all__ = [
    "DONE", "DROPPED", "FORWARDED", "REJECTED", "ChatStream", "TranslationError", "UpstreamFailed",
    "aggregate_chat", "chat_to_responses", "chat_usage", "sse_chunk",
]

DONE = b"data: [DONE]\n\n"

# The allow-list: the only Chat Completions fields that reach upstream, and what each becomes.
FORWARDED: dict[str, str] = {
    "model": "model",
    "messages": "input (items; system and developer messages become developer messages)",
    "tools": "tools (function tools, flattened; strict defaults to false as in Chat Completions)",
    "tool_choice": "tool_choice",
    "parallel_tool_calls": "parallel_tool_calls",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
    "verbosity": "text.verbosity",
    "prompt_cache_key": "prompt_cache_key",
}
# Always set, whatever the client sent: upstream rejects anything else.
FORCED: dict[str, Any] = {"stream": True, "store": False}
# Accepted and dropped on purpose. Upstream rejects `max_output_tokens` ("Unsupported parameter"), so no
# output limit can be forwarded; the Codex CLI never sends sampling knobs (temperature, top_p, penalties,
# seed, stop, logit_bias) and the reasoning models behind the backend reject or ignore them.
# `stream`/`stream_options` are the proxy's business (ChatStream), `store`/`metadata` mean nothing with
# store=false, and `n` is fine only as 1.
DROPPED: frozenset[str] = frozenset({
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty",
    "seed", "stop", "logit_bias", "logprobs", "top_logprobs", "user", "safety_identifier", "metadata", "store",
    "service_tier", "stream", "stream_options", "n", "modalities", "prediction", "web_search_options",
})
# Refused with a 400, because dropping them would silently answer a different question.
REJECTED: dict[str, str] = {
    "n": "only n=1 is supported",
    "functions": "the legacy 'functions' parameter is not supported; use 'tools'",
    "function_call": "the legacy 'function_call' parameter is not supported; use 'tool_choice'",
    "audio": "audio output is not supported",
    "modalities": "only the 'text' modality is supported",
}

_ROLES = "'system', 'developer', 'user', 'assistant' and 'tool'"
_JSON_KIND = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
              float: "a number", type(None): "null"}


# ---------------------------------------------------------------------------------------------- request


def _kind(value: Any) -> str:
    return _JSON_KIND.get(type(value), "a value")


def _invalid_type(param: str, expected: str, value: Any) -> TranslationError:
    return TranslationError(f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
                            param, code="invalid_type")


def _missing(param: str) -> TranslationError:
    return TranslationError(f"Missing required parameter: '{param}'.", param, code="missing_required_parameter")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt(obj: dict[str, Any], key: str, param: str, kinds: tuple[type, ...], expected: str) -> Any:
    """obj[key] if present and not null, checked against `kinds`; bool never passes for int."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
        return value
    raise _invalid_type(param, expected, value)


def _req(obj: dict[str, Any], key: str, param: str, kinds: tuple[type, ...], expected: str) -> Any:
    value = _opt(obj, key, param, kinds, expected)
    if value is None:
        raise _missing(param)
    return value


def _parts(content: Any, param: str) -> list[tuple[str, dict[str, Any]]]:
    """A message's content as (part type, part) pairs; a string is one text part."""
    if isinstance(content, str):
        return [("text", {"type": "text", "text": content})]
    if not isinstance(content, list):
        raise _invalid_type(param, "a string or an array of content parts", content)
    parts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _invalid_type(where, "an object", part)
        parts.append((_req(part, "type", f"{where}.type", (str,), "a string"), part))
    return parts


def _unsupported_part(param: str, kind: str, role: str, allowed: str) -> TranslationError:
    return TranslationError(f"Invalid value for '{param}.type': '{kind}' is not supported in a '{role}' "
                            f"message; supported: {allowed}.", f"{param}.type")


def _texts(content: Any, param: str, role: str) -> list[str]:
    """system/developer/tool content: a string or text parts only."""
    texts = []
    for j, (kind, part) in enumerate(_parts(content, param)):
        where = f"{param}[{j}]"
        if kind != "text":
            raise _unsupported_part(where, kind, role, "'text'")
        texts.append(_req(part, "text", f"{where}.text", (str,), "a string"))
    return texts


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    if isinstance(image, str):  # some clients send the URL itself
        url, detail = image, None
    elif isinstance(image, dict):
        url = _req(image, "url", f"{where}.image_url.url", (str,), "a string")
        detail = _opt(image, "detail", f"{where}.image_url.detail", (str,), "a string")
    elif image is None:
        raise _missing(f"{where}.image_url")
    else:
        raise _invalid_type(f"{where}.image_url", "an object", image)
    out = {"type": "input_image", "image_url": url}
    if detail is not None:  # like the Codex CLI, send `detail` only when there is one (upstream: "auto")
        out["detail"] = detail
    return out


def _file(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = _req(part, "file", f"{where}.file", (dict,), "an object")
    out: dict[str, Any] = {"type": "input_file"}
    for key in ("file_data", "file_id", "filename"):
        value = _opt(file, key, f"{where}.file.{key}", (str,), "a string")
        if value is not None:
            out[key] = value
    if "file_data" not in out and "file_id" not in out:
        raise _missing(f"{where}.file.file_data")
    return out


def _user_content(content: Any, param: str) -> list[dict[str, Any]]:
    out = []
    for j, (kind, part) in enumerate(_parts(content, param)):
        where = f"{param}[{j}]"
        if kind == "text":
            out.append({"type": "input_text", "text": _req(part, "text", f"{where}.text", (str,), "a string")})
        elif kind == "image_url":
            out.append(_image(part, where))
        elif kind == "file":
            out.append(_file(part, where))
        else:
            raise _unsupported_part(where, kind, "user", "'text', 'image_url' and 'file'")
    return out


def _arguments(call: dict[str, Any], param: str) -> str:
    args = call.get("arguments")
    if args is None:
        return "{}"
    if isinstance(args, str):
        return args
    if isinstance(args, dict):  # lenient: an object instead of its JSON text
        return orjson.dumps(args).decode()
    raise _invalid_type(param, "a string", args)


def _tool_calls(message: dict[str, Any], param: str, seen: set[str]) -> list[dict[str, Any]]:
    calls = _opt(message, "tool_calls", f"{param}.tool_calls", (list,), "an array")
    items = []
    for k, call in enumerate(calls or []):
        where = f"{param}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise _invalid_type(where, "an object", call)
        kind = _opt(call, "type", f"{where}.type", (str,), "a string") or "function"
        if kind != "function":
            raise TranslationError(f"Invalid value for '{where}.type': only 'function' tool calls are supported.",
                                   f"{where}.type")
        call_id = _req(call, "id", f"{where}.id", (str,), "a string")
        function = _req(call, "function", f"{where}.function", (dict,), "an object")
        name = _req(function, "name", f"{where}.function.name", (str,), "a string")
        seen.add(call_id)
        items.append({"type": "function_call", "call_id": call_id, "name": name,
                      "arguments": _arguments(function, f"{where}.function.arguments")})
    return items


def _system(message: dict[str, Any], param: str, seen: set[str]) -> list[dict[str, Any]]:
    # The Codex backend takes no `instructions`: the real CLI sends its base prompt as a developer message.
    content = message.get("content")
    if content is None:
        raise _missing(f"{param}.content")
    texts = _texts(content, f"{param}.content", str(message.get("role")))
    return [{"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": text} for text in texts]}]


def _user(message: dict[str, Any], param: str, seen: set[str]) -> list[dict[str, Any]]:
    content = message.get("content")
    if content is None:
        raise _missing(f"{param}.content")
    return [{"type": "message", "role": "user", "content": _user_content(content, f"{param}.content")}]


def _assistant(message: dict[str, Any], param: str, seen: set[str]) -> list[dict[str, Any]]:
    if message.get("function_call") is not None:
        raise TranslationError(f"'{param}.function_call' (legacy function calling) is not supported; use "
                               "'tool_calls'.", f"{param}.function_call")
    content = message.get("content")
    parts: list[dict[str, Any]] = []
    if content is not None:
        for j, (kind, part) in enumerate(_parts(content, f"{param}.content")):
            where = f"{param}.content[{j}]"
            if kind == "text":
                text = _req(part, "text", f"{where}.text", (str,), "a string")
                if text:
                    parts.append({"type": "output_text", "text": text})
            elif kind == "refusal":
                parts.append({"type": "refusal",
                              "refusal": _req(part, "refusal", f"{where}.refusal", (str,), "a string")})
            else:
                raise _unsupported_part(where, kind, "assistant", "'text' and 'refusal'")
    refusal = _opt(message, "refusal", f"{param}.refusal", (str,), "a string")
    if refusal and not any(part["type"] == "refusal" for part in parts):
        parts.append({"type": "refusal", "refusal": refusal})
    items: list[dict[str, Any]] = []
    if parts:
        items.append({"type": "message", "role": "assistant", "content": parts})
    items.extend(_tool_calls(message, param, seen))
    return items  # an assistant message with nothing in it adds nothing


def _tool(message: dict[str, Any], param: str, seen: set[str]) -> list[dict[str, Any]]:
    call_id = _req(message, "tool_call_id", f"{param}.tool_call_id", (str,), "a string")
    if call_id not in seen:
        # Chat Completions refuses this too; upstream would fail it with a less helpful message.
        raise TranslationError(f"Invalid parameter: '{param}' with role 'tool' must answer a preceding assistant "
                               f"message's tool_calls; no tool call has id '{call_id}'.",
                               f"{param}.tool_call_id")
    content = message.get("content")
    if content is None:
        raise _missing(f"{param}.content")
    return [{"type": "function_call_output", "call_id": call_id,
             "output": "".join(_texts(content, f"{param}.content", "tool"))}]


_BY_ROLE: dict[str, Callable[[dict[str, Any], str, set[str]], list[dict[str, Any]]]] = {
    "system": _system, "developer": _system, "user": _user, "assistant": _assistant, "tool": _tool,
}


def _input(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise TranslationError("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                               "messages", code="empty_array")
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid_type(param, "an object", message)
        role = _req(message, "role", f"{param}.role", (str,), "a string")
        convert = _BY_ROLE.get(role)
        if convert is None:
            raise TranslationError(f"Invalid value for '{param}.role': '{role}'. Supported values are: {_ROLES}.",
                                   f"{param}.role")
        items.extend(convert(message, param, seen))
    return items


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _invalid_type("tools", "an array", tools)
    out = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _invalid_type(param, "an object", tool)
        kind = _req(tool, "type", f"{param}.type", (str,), "a string")
        if kind != "function":
            raise TranslationError(f"Invalid value for '{param}.type': '{kind}'. Only 'function' tools are "
                                   "supported.", f"{param}.type")
        function = _req(tool, "function", f"{param}.function", (dict,), "an object")
        name = _req(function, "name", f"{param}.function.name", (str,), "a string")
        if not name:
            raise TranslationError(f"Invalid '{param}.function.name': empty string.", f"{param}.function.name",
                                   code="empty_string")
        converted: dict[str, Any] = {"type": "function", "name": name}
        description = _opt(function, "description", f"{param}.function.description", (str,), "a string")
        if description is not None:
            converted["description"] = description
        parameters = _opt(function, "parameters", f"{param}.function.parameters", (dict,), "an object")
        converted["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
        # Responses defaults `strict` to true, Chat Completions to false: say the client's choice explicitly.
        strict = _opt(function, "strict", f"{param}.function.strict", (bool,), "a boolean")
        converted["strict"] = bool(strict)
        out.append(converted)
    return out


def _function_name(obj: dict[str, Any], param: str) -> str:
    function = _req(obj, "function", f"{param}.function", (dict,), "an object")
    return _req(function, "name", f"{param}.function.name", (str,), "a string")


def _tool_choice(choice: Any) -> Any:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise TranslationError(f"Invalid value for 'tool_choice': '{choice}'. Supported values are: 'auto', "
                                   "'none' and 'required', or an object naming a function.", "tool_choice")
        return choice
    if not isinstance(choice, dict):
        raise _invalid_type("tool_choice", "a string or an object", choice)
    kind = _req(choice, "type", "tool_choice.type", (str,), "a string")
    if kind == "function":
        return {"type": "function", "name": _function_name(choice, "tool_choice")}
    if kind == "allowed_tools":
        allowed = _req(choice, "allowed_tools", "tool_choice.allowed_tools", (dict,), "an object")
        mode = _req(allowed, "mode", "tool_choice.allowed_tools.mode", (str,), "a string")
        if mode not in ("auto", "required"):
            raise TranslationError(f"Invalid value for 'tool_choice.allowed_tools.mode': '{mode}'. Supported "
                                   "values are: 'auto' and 'required'.", "tool_choice.allowed_tools.mode")
        tools = _req(allowed, "tools", "tool_choice.allowed_tools.tools", (list,), "an array")
        names = []
        for k, tool in enumerate(tools):
            where = f"tool_choice.allowed_tools.tools[{k}]"
            if not isinstance(tool, dict):
                raise _invalid_type(where, "an object", tool)
            if (_opt(tool, "type", f"{where}.type", (str,), "a string") or "function") != "function":
                raise TranslationError(f"Invalid value for '{where}.type': only 'function' tools are supported.",
                                       f"{where}.type")
            names.append({"type": "function", "name": _function_name(tool, where)})
        return {"type": "allowed_tools", "mode": mode, "tools": names}
    raise TranslationError(f"Invalid value for 'tool_choice.type': '{kind}'. Supported values are: 'function' "
                           "and 'allowed_tools'.", "tool_choice.type")


def _text_format(response_format: Any) -> dict[str, Any] | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise _invalid_type("response_format", "an object", response_format)
    kind = _req(response_format, "type", "response_format.type", (str,), "a string")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        spec = _req(response_format, "json_schema", "response_format.json_schema", (dict,), "an object")
        out: dict[str, Any] = {
            "type": "json_schema",
            "name": _req(spec, "name", "response_format.json_schema.name", (str,), "a string"),
            "schema": _req(spec, "schema", "response_format.json_schema.schema", (dict,), "an object"),
        }
        description = _opt(spec, "description", "response_format.json_schema.description", (str,), "a string")
        if description is not None:
            out["description"] = description
        strict = _opt(spec, "strict", "response_format.json_schema.strict", (bool,), "a boolean")
        if strict is not None:
            out["strict"] = strict
        return out
    raise TranslationError(f"Invalid value for 'response_format.type': '{kind}'. Supported values are: 'text', "
                           "'json_object' and 'json_schema'.", "response_format.type")


def _reject_unsupported(body: dict[str, Any]) -> None:
    n = _opt(body, "n", "n", (int,), "an integer")
    if n is not None and n != 1:
        raise TranslationError(f"Invalid value for 'n': {REJECTED['n']}.", "n")
    for key in ("functions", "function_call", "audio"):
        if body.get(key) is not None:
            raise TranslationError(f"Unsupported parameter: '{key}': {REJECTED[key]}.", key,
                                   code="unsupported_parameter")
    modalities = _opt(body, "modalities", "modalities", (list,), "an array")
    if modalities and any(m != "text" for m in modalities):
        raise TranslationError(f"Invalid value for 'modalities': {REJECTED['modalities']}.", "modalities")


def chat_to_responses(body: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions request body → the Responses request to send upstream (see FORWARDED)."""
    if not isinstance(body, dict):
        raise TranslationError(f"Invalid request body: expected an object, but got {_kind(body)} instead.",
                               None, code="invalid_type")
    model = _req(body, "model", "model", (str,), "a string")
    if not model:
        raise TranslationError("Invalid 'model': empty string.", "model", code="empty_string")
    _reject_unsupported(body)
    # Checked here although consumed by the caller, so a bad value is a 400 before anything is sent.
    _opt(body, "stream", "stream", (bool,), "a boolean")
    options = _opt(body, "stream_options", "stream_options", (dict,), "an object")
    if options is not None:
        _opt(options, "include_usage", "stream_options.include_usage", (bool,), "a boolean")

    out: dict[str, Any] = {"model": model, "input": _input(body.get("messages"))}
    tools = _tools(body.get("tools"))
    if tools is not None:
        out["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None:
        out["tool_choice"] = choice
    parallel = _opt(body, "parallel_tool_calls", "parallel_tool_calls", (bool,), "a boolean")
    if parallel is not None:
        out["parallel_tool_calls"] = parallel
    effort = _opt(body, "reasoning_effort", "reasoning_effort", (str,), "a string")
    if effort is not None:
        out["reasoning"] = {"effort": effort}
    text: dict[str, Any] = {}
    text_format = _text_format(body.get("response_format"))
    if text_format is not None:
        text["format"] = text_format
    verbosity = _opt(body, "verbosity", "verbosity", (str,), "a string")
    if verbosity is not None:
        text["verbosity"] = verbosity
    if text:
        out["text"] = text
    cache_key = _opt(body, "prompt_cache_key", "prompt_cache_key", (str,), "a string")
    if cache_key is not None:
        out["prompt_cache_key"] = cache_key
    out.update(FORCED)
    return out


# ---------------------------------------------------------------------------------------------- response


def _int(value: Any) -> int:
    return value if _is_int(value) else 0


def chat_usage(usage: Any) -> dict[str, Any]:
    """Responses `usage` → Chat Completions `usage` (missing figures count as 0)."""
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
    total = usage.get("total_tokens")
    input_details = usage.get("input_tokens_details")
    output_details = usage.get("output_tokens_details")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if _is_int(total) else prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": _int(input_details.get("cached_tokens")) if isinstance(input_details, dict) else 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": (_int(output_details.get("reasoning_tokens"))
                                 if isinstance(output_details, dict) else 0),
        },
    }


def sse_chunk(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@dataclass(slots=True)
class _Item:
    """One upstream output item, as far as it has been passed on to the client."""

    kind: str
    sent: dict[tuple[str, int], str] = field(default_factory=dict)  # (text|refusal, content index) → sent
    call: int | None = None  # tool_calls index
    args_sent: str = ""


_TERMINAL_OK = ("response.completed", "response.incomplete")


class ChatStream:
    """Responses events → `chat.completion.chunk` objects.

    Feed every upstream event to `feed()` and send what it returns; call `close()` when the upstream stream
    ends (it raises `UpstreamFailed("stream_incomplete")` if no terminal event came). `feed()` raises
    `UpstreamFailed` on `response.failed` / `error`. Text that upstream only states in a `.done` event or in
    the completed response (never as deltas) is still passed on, exactly once.
    """

    def __init__(self, model: str, *, include_usage: bool = False, created: int | None = None) -> None:
        self.model = model  # replaced by upstream's when the stream names one
        self.include_usage = include_usage
        self.created = created if created is not None else int(time.time())
        self.id: str | None = None
        self.finished = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self._started = False
        self._items: dict[str, _Item] = {}
        self._calls = 0

    @classmethod
    def for_request(cls, body: dict[str, Any], *, created: int | None = None) -> "ChatStream":
        """For a Chat Completions request that `chat_to_responses` accepted."""
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return cls(str(body.get("model") or ""), include_usage=include_usage, created=created)

    # -- chunks

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if self.id is None:  # upstream never said its response id
            self.id = f"chatcmpl-{secrets.token_hex(12)}"
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI: null on every chunk but the last
        return chunk

    def _start(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def _adopt(self, response: Any) -> None:
        """Take id, creation time and model from an upstream Response object, before the first chunk only."""
        if not isinstance(response, dict) or self._started:
            return
        if isinstance(response.get("id"), str) and response["id"]:
            self.id = f"chatcmpl-{response['id']}"
        if _is_int(response.get("created_at")):
            self.created = response["created_at"]
        if isinstance(response.get("model"), str) and response["model"]:
            self.model = response["model"]

    # -- items

    def _item(self, item_id: Any, output_index: Any, kind: str | None = None) -> _Item | None:
        keys = []
        if isinstance(item_id, str) and item_id:
            keys.append("id:" + item_id)
        if _is_int(output_index):
            keys.append(f"at:{output_index}")
        found = next((self._items[k] for k in keys if k in self._items), None)
        if found is None and kind is not None:
            found = _Item(kind)
        if found is not None:
            for key in keys:
                self._items.setdefault(key, found)
        return found

    def _open_call(self, record: _Item, item: dict[str, Any]) -> list[dict[str, Any]]:
        if record.call is not None:
            return []
        record.call = self._calls
        self._calls += 1
        call_id = item.get("call_id") or item.get("id") or f"call_{secrets.token_hex(12)}"
        name = item.get("name") if isinstance(item.get("name"), str) else ""
        return [self._chunk({"tool_calls": [{"index": record.call, "id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": ""}}]})]

    def _args(self, record: _Item, delta: str) -> list[dict[str, Any]]:
        if not delta or record.call is None:
            return []
        record.args_sent += delta
        return [self._chunk({"tool_calls": [{"index": record.call, "function": {"arguments": delta}}]})]

    def _args_catch_up(self, record: _Item, full: Any) -> list[dict[str, Any]]:
        if isinstance(full, str) and full.startswith(record.args_sent):
            return self._args(record, full[len(record.args_sent):])
        return []  # what was sent cannot be taken back

    def _text(self, record: _Item, field_name: str, index: Any, delta: Any) -> list[dict[str, Any]]:
        if not isinstance(delta, str) or not delta:
            return []
        key = (field_name, index if _is_int(index) else 0)
        record.sent[key] = record.sent.get(key, "") + delta
        return [self._chunk({"content" if field_name == "text" else "refusal": delta})]

    def _text_catch_up(self, record: _Item, field_name: str, index: Any, full: Any) -> list[dict[str, Any]]:
        sent = record.sent.get((field_name, index if _is_int(index) else 0), "")
        if isinstance(full, str) and full.startswith(sent):
            return self._text(record, field_name, index, full[len(sent):])
        return []

    def _item_done(self, item: Any, output_index: Any) -> list[dict[str, Any]]:
        """A finished output item: pass on whatever of it the deltas did not."""
        if not isinstance(item, dict):
            return []
        kind = item.get("type")
        if kind == "function_call":
            record = self._item(item.get("id"), output_index, "function_call")
            assert record is not None
            return self._open_call(record, item) + self._args_catch_up(record, item.get("arguments"))
        if kind == "message":
            record = self._item(item.get("id"), output_index, "message")
            assert record is not None
            out = []
            content = item.get("content")
            for j, part in enumerate(content if isinstance(content, list) else []):
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "output_text":
                    out += self._text_catch_up(record, "text", j, part.get("text"))
                elif part.get("type") == "refusal":
                    out += self._text_catch_up(record, "refusal", j, part.get("refusal"))
            return out
        return []  # reasoning and anything else has no Chat Completions form

    # -- events

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one upstream event makes (often none)."""
        if self.finished or not isinstance(event, dict):
            return []
        failure = failure_of(event)
        if failure is not None:
            self.finished = True
            raise failure
        kind = event.get("type")
        if kind in ("response.created", "response.in_progress"):
            self._adopt(event.get("response"))
            return self._start()
        if kind in _TERMINAL_OK:
            return self._terminal(kind, event.get("response"))
        produced = self._dispatch(kind, event)
        # The role chunk goes first, once: only when there is something to say, so that an early
        # bookkeeping event (codex.rate_limits) cannot start the stream before response.created names it.
        return self._start() + produced if produced else []

    def _dispatch(self, kind: Any, event: dict[str, Any]) -> list[dict[str, Any]]:
        item_id, output_index = event.get("item_id"), event.get("output_index")
        out: list[dict[str, Any]] = []
        if kind == "response.output_item.added":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                record = self._item(item.get("id"), output_index, "function_call")
                assert record is not None
                out += self._open_call(record, item) + self._args_catch_up(record, item.get("arguments") or "")
            elif isinstance(item, dict) and isinstance(item.get("type"), str):
                self._item(item.get("id"), output_index, item["type"])
        elif kind == "response.output_item.done":
            out += self._item_done(event.get("item"), output_index)
        elif kind in ("response.output_text.delta", "response.refusal.delta"):
            record = self._item(item_id, output_index, "message")
            assert record is not None
            field_name = "text" if kind == "response.output_text.delta" else "refusal"
            out += self._text(record, field_name, event.get("content_index"), event.get("delta"))
        elif kind in ("response.output_text.done", "response.refusal.done"):
            record = self._item(item_id, output_index, "message")
            assert record is not None
            field_name = "text" if kind == "response.output_text.done" else "refusal"
            out += self._text_catch_up(record, field_name, event.get("content_index"), event.get(field_name))
        elif kind in ("response.function_call_arguments.delta", "response.function_call_arguments.done"):
            record = self._item(item_id, output_index)
            if record is not None:  # without output_item.added there is no name yet: output_item.done says all
                if kind.endswith(".delta"):
                    delta = event.get("delta")
                    out += self._args(record, delta if isinstance(delta, str) else "")
                else:
                    out += self._args_catch_up(record, event.get("arguments"))
        return out

    def _terminal(self, kind: str, response: Any) -> list[dict[str, Any]]:
        response = response if isinstance(response, dict) else {}
        self._adopt(response)
        out = self._start()
        output = response.get("output")
        for index, item in enumerate(output if isinstance(output, list) else []):
            out += self._item_done(item, index)
        details = response.get("incomplete_details")
        if kind == "response.incomplete" or response.get("status") == "incomplete":
            reason = details.get("reason") if isinstance(details, dict) else None
            self.finish_reason = "content_filter" if reason == "content_filter" else "length"
        elif self._calls:
            self.finish_reason = "tool_calls"
        else:
            self.finish_reason = "stop"
        out.append(self._chunk({}, self.finish_reason))
        self.usage = chat_usage(response.get("usage"))
        if self.include_usage:
            out.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "system_fingerprint": None, "choices": [], "usage": self.usage})
        self.finished = True
        return out

    def close(self) -> list[dict[str, Any]]:
        """The upstream stream ended: fine after a terminal event, `UpstreamFailed` otherwise."""
        if not self.finished:
            self.finished = True
            raise stream_incomplete()
        return []


def aggregate_chat(events: Iterable[dict[str, Any]], *, model: str = "",
                   created: int | None = None) -> dict[str, Any]:
    """A whole Responses event stream → one `chat.completion` object (for `stream: false` clients).

    `model` is the client's, used only if upstream names none. Raises `UpstreamFailed` on a failed stream
    or one without a terminal event.
    """
    stream = ChatStream(model, include_usage=True, created=created)
    chunks: list[dict[str, Any]] = []
    for event in events:
        chunks += stream.feed(event)
        if stream.finished:
            break
    stream.close()
    content: list[str] = []
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                content.append(delta["content"])
            if delta.get("refusal"):
                refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                if "id" in call:
                    calls[call["index"]] = {"id": call["id"], "type": "function",
                                            "function": {"name": call["function"]["name"], "arguments": ""}}
                calls[call["index"]]["function"]["arguments"] += call["function"].get("arguments", "")
    message: dict[str, Any] = {
        "role": "assistant",
        # As OpenAI: null when the answer is only tool calls (or only a refusal).
        "content": "".join(content) if content or not (calls or refusal) else None,
        "refusal": "".join(refusal) if refusal else None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": stream.id, "object": "chat.completion", "created": stream.created, "model": stream.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": stream.finish_reason}],
        "usage": stream.usage,
    }
