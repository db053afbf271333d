"""What the simulated model answers: deterministic event sequences with honest usage.

- The latest input item is a user message containing `call:NAME {json}`: a
  function call to NAME with those arguments (agents run tool loops on it).
- `generate: false` (the Codex CLI's prewarm): a completed response with no output.
- Anything else: a short assistant message, one delta per word.
A reasoning item with account-bound `encrypted_content` comes first when the
request asks for `reasoning.encrypted_content`, as upstream does.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

_CALL = re.compile(r"call:([A-Za-z0-9_.-]+)\s*(\{.*\})?", re.S)
_ENC_PREFIX = "simenc1:"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def tokens_for(size_bytes: int) -> int:
    """About four bytes of JSON per token: honest enough that clients compact when they should."""
    return (size_bytes + 3) // 4


def encrypted_content(account_id: str) -> str:
    return _ENC_PREFIX + base64.urlsafe_b64encode(f"{account_id}:{secrets.token_hex(8)}".encode()).decode()


def encrypted_owner(blob: str) -> str | None:
    """The account an `encrypted_content` blob was made for, or None if it is not ours."""
    if not blob.startswith(_ENC_PREFIX):
        return None
    try:
        return base64.urlsafe_b64decode(blob[len(_ENC_PREFIX):]).decode().rsplit(":", 1)[0]
    except (ValueError, UnicodeDecodeError):
        return None


def _text_of(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _last_user_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            return _text_of(item)
    return ""


@dataclass(slots=True)
class Answer:
    response_id: str
    events: list[dict[str, Any]]
    output: list[dict[str, Any]]
    usage: dict[str, Any]


def _response_object(response_id: str, model: str, status: str, created_at: int,
                     previous_response_id: str | None, output: list[Any], usage: Any = None) -> dict[str, Any]:
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "model": model, "output": output, "previous_response_id": previous_response_id,
        "store": False, "usage": usage,
    }


def build(payload: dict[str, Any], new_items: list[dict[str, Any]], *, account_id: str, context_tokens: int,
          cached_tokens: int, reply_words: int) -> Answer:
    """Events for one response; `context_tokens` counts everything the model reads."""
    response_id = new_id("resp")
    model = payload["model"]
    created_at = int(time.time())
    previous = payload.get("previous_response_id")
    events: list[dict[str, Any]] = []
    output: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    emit("response.created", response=_response_object(response_id, model, "in_progress", created_at, previous, []))
    emit("response.in_progress", response=_response_object(response_id, model, "in_progress", created_at, previous, []))

    text_out = ""
    if payload.get("generate", True) is not False:
        if "reasoning.encrypted_content" in (payload.get("include") or []):
            item = {"id": new_id("rs"), "type": "reasoning", "summary": []}
            emit("response.output_item.added", output_index=len(output), item=item)
            done = {**item, "encrypted_content": encrypted_content(account_id)}
            emit("response.output_item.done", output_index=len(output), item=done)
            output.append(done)

        last = new_items[-1] if new_items else {}
        call = _CALL.search(_last_user_text(new_items)) if last.get("role") == "user" else None
        if call:
            arguments = call.group(2) or "{}"
            item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress", "name": call.group(1),
                    "arguments": "", "call_id": new_id("call")}
            index = len(output)
            emit("response.output_item.added", output_index=index, item=item)
            emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=arguments)
            emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                 arguments=arguments)
            done = {**item, "status": "completed", "arguments": arguments}
            emit("response.output_item.done", output_index=index, item=done)
            output.append(done)
            text_out = arguments
        else:
            if last.get("type") == "function_call_output":
                said = f"The tool returned {len(str(last.get('output', '')))} characters."
            else:
                snippet = " ".join(_last_user_text(new_items).split()[:12]) or "nothing"
                said = f"You said: {snippet}"
            words = f"Hello from the codexlb simulator. {said}".split()
            words += [f"word{i}" for i in range(max(0, reply_words - len(words)))]
            text_out = " ".join(words)
            item_id = new_id("msg")
            index = len(output)
            item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": []}
            where = {"item_id": item_id, "output_index": index, "content_index": 0}
            emit("response.output_item.added", output_index=index, item=item)
            emit("response.content_part.added", **where, part=part)
            for i, word in enumerate(words):
                emit("response.output_text.delta", **where, delta=word if i == 0 else " " + word)
            emit("response.output_text.done", **where, text=text_out)
            full_part = {**part, "text": text_out}
            emit("response.content_part.done", **where, part=full_part)
            done = {**item, "status": "completed", "content": [full_part]}
            emit("response.output_item.done", output_index=index, item=done)
            output.append(done)

    output_tokens = tokens_for(len(text_out)) if output else 0
    reasoning_tokens = 8 if output and output[0]["type"] == "reasoning" else 0
    usage = {
        "input_tokens": context_tokens,
        "input_tokens_details": {"cached_tokens": min(cached_tokens, context_tokens)},
        "output_tokens": output_tokens + reasoning_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": context_tokens + output_tokens + reasoning_tokens,
    }
    emit("response.completed",
         response=_response_object(response_id, model, "completed", created_at, previous, output, usage))
    return Answer(response_id, events, output, usage)


def failed_event(answer: Answer, sequence_number: int, code: str, message: str) -> dict[str, Any]:
    created = answer.events[0]["response"]
    response = {**created, "status": "failed", "error": {"code": code, "message": message}}
    return {"type": "response.failed", "sequence_number": sequence_number, "response": response}


def sse_frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
