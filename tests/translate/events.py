"""Realistic Responses event sequences for the translation tests: the sim's own generator, plus small
hand-built streams for what the sim never says (parallel calls, refusals, incomplete responses)."""

from __future__ import annotations

from typing import Any

from codexlb.sim import responses

MODEL = "gpt-5.5"


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def build(text: str, *, include_reasoning: bool = False, context_tokens: int = 1200, cached_tokens: int = 1000,
          reply_words: int = 0, model: str = MODEL) -> responses.Answer:
    """What the sim answers to one user message (`call:NAME {json}` makes a function call)."""
    payload: dict[str, Any] = {"model": model, "stream": True, "store": False, "input": [user(text)]}
    if include_reasoning:
        payload["include"] = ["reasoning.encrypted_content"]
    return responses.build(payload, payload["input"], account_id="acct-test", context_tokens=context_tokens,
                           cached_tokens=cached_tokens, reply_words=reply_words)


class Stream:
    """A hand-built event stream, numbered like upstream's."""

    def __init__(self, response_id: str = "resp_hand", model: str = MODEL, created_at: int = 1_700_000_000):
        self.events: list[dict[str, Any]] = []
        self.response = {"id": response_id, "object": "response", "created_at": created_at,
                         "status": "in_progress", "model": model, "output": [], "usage": None}
        self.output: list[dict[str, Any]] = []

    def emit(self, kind: str, **fields: Any) -> "Stream":
        self.events.append({"type": kind, "sequence_number": len(self.events), **fields})
        return self

    def start(self) -> "Stream":
        self.emit("response.created", response=dict(self.response))
        return self.emit("response.in_progress", response=dict(self.response))

    def message(self, item_id: str, *deltas: str, index: int | None = None, done: bool = True) -> "Stream":
        index = len(self.output) if index is None else index
        text = "".join(deltas)
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        self.emit("response.output_item.added", output_index=index, item=item)
        self.emit("response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []})
        for delta in deltas:
            self.emit("response.output_text.delta", **where, delta=delta)
        full = {"type": "output_text", "text": text, "annotations": []}
        final = {**item, "status": "completed", "content": [full]}
        if done:
            self.emit("response.output_text.done", **where, text=text)
            self.emit("response.content_part.done", **where, part=full)
            self.emit("response.output_item.done", output_index=index, item=final)
        self.output.append(final)
        return self

    def call_added(self, item_id: str, call_id: str, name: str, index: int) -> "Stream":
        item = {"id": item_id, "type": "function_call", "status": "in_progress", "name": name, "arguments": "",
                "call_id": call_id}
        return self.emit("response.output_item.added", output_index=index, item=item)

    def call_delta(self, item_id: str, index: int, delta: str) -> "Stream":
        return self.emit("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=delta)

    def call_done(self, item_id: str, call_id: str, name: str, index: int, arguments: str) -> "Stream":
        self.emit("response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=arguments)
        item = {"id": item_id, "type": "function_call", "status": "completed", "name": name,
                "arguments": arguments, "call_id": call_id}
        self.emit("response.output_item.done", output_index=index, item=item)
        self.output.append(item)
        return self

    def final(self, usage: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        return {**self.response, "status": "completed", "output": list(self.output),
                "usage": usage if usage is not None else USAGE, **overrides}

    def completed(self, usage: dict[str, Any] | None = None, **overrides: Any) -> list[dict[str, Any]]:
        self.emit("response.completed", response=self.final(usage, **overrides))
        return self.events

    def incomplete(self, reason: str) -> list[dict[str, Any]]:
        self.emit("response.incomplete", response=self.final(status="incomplete",
                                                             incomplete_details={"reason": reason}))
        return self.events

    def failed(self, code: str = "server_error", message: str = "Upstream broke.") -> list[dict[str, Any]]:
        self.emit("response.failed", response={**self.response, "status": "failed",
                                               "error": {"code": code, "message": message}})
        return self.events


USAGE = {"input_tokens": 1500, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens": 40,
         "output_tokens_details": {"reasoning_tokens": 16}, "total_tokens": 1540}
