"""A Responses event stream → the final Response object, for `/v1/responses` with `stream: false`.

Upstream only streams, so a non-streaming client gets what `response.completed` (or
`response.incomplete`) carries. That object already holds `output` and `usage`; when it lacks `output`,
the items of the `response.output_item.done` events stand in. Fields the Response schema requires and
upstream leaves out are filled in (see `aggregate_response`). Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Iterable

from codexlb.translate.errors import UpstreamFailed, failure_of, stream_incomplete

__all__ = ["UpstreamFailed", "aggregate_response"]

_TERMINAL_OK = ("response.completed", "response.incomplete")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def aggregate_response(events: Iterable[dict[str, Any]], request: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Response object a `stream: false` client gets.

    `request` is the Responses request that was sent upstream: fields a Response must carry and upstream
    left out (`tools`, `tool_choice`, `parallel_tool_calls`) are taken from it, else given their API
    defaults. Raises `UpstreamFailed` on `response.failed` / `error`, and `stream_incomplete` when the
    events end without a terminal event. A `response.incomplete` is an answer (status "incomplete"), as
    with the OpenAI API.
    """
    started: dict[str, Any] = {}
    done_items: dict[int, dict[str, Any]] = {}
    terminal: tuple[str, dict[str, Any]] | None = None
    for event in events:
        if not isinstance(event, dict):
            continue
        failure = failure_of(event)
        if failure is not None:
            raise failure
        kind = event.get("type")
        response = event.get("response")
        if kind in ("response.created", "response.in_progress") and isinstance(response, dict):
            started = response
        elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            index = event.get("output_index")
            done_items[index if _is_int(index) else len(done_items)] = event["item"]
        elif kind in _TERMINAL_OK:
            terminal = (kind, response if isinstance(response, dict) else {})
            break
    if terminal is None:
        raise stream_incomplete()
    kind, final = terminal

    result = dict(final)
    for key in ("id", "created_at", "model"):  # a terminal that omits them: as response.created said
        if result.get(key) is None and started.get(key) is not None:
            result[key] = started[key]
    if not isinstance(result.get("output"), list) or not result["output"]:
        result["output"] = [done_items[i] for i in sorted(done_items)]
    result["object"] = "response"
    if not isinstance(result.get("status"), str):
        result["status"] = "incomplete" if kind == "response.incomplete" else "completed"
    request = request if isinstance(request, dict) else {}
    defaults = {"tools": [], "tool_choice": "auto", "parallel_tool_calls": True}
    for key, default in defaults.items():
        if result.get(key) is None:
            result[key] = request[key] if request.get(key) is not None else default
    for key in ("error", "incomplete_details", "instructions"):
        result.setdefault(key, None)
    result["usage"] = _usage(result.get("usage"))
    return result


def _usage(usage: Any) -> dict[str, Any] | None:
    """Upstream's usage with every figure the Response schema requires; what upstream did not say is 0.

    The Codex backend reports `input_tokens_details.cached_tokens` only; current OpenAI SDKs also require
    `input_tokens_details.cache_write_tokens`.
    """
    if not isinstance(usage, dict):
        return None
    out = dict(usage)
    for key in ("input_tokens", "output_tokens"):
        if not _is_int(out.get(key)):
            out[key] = 0
    if not _is_int(out.get("total_tokens")):
        out["total_tokens"] = out["input_tokens"] + out["output_tokens"]
    for key, required in (("input_tokens_details", ("cached_tokens", "cache_write_tokens")),
                          ("output_tokens_details", ("reasoning_tokens",))):
        details = out.get(key)
        details = dict(details) if isinstance(details, dict) else {}
        for name in required:
            if not _is_int(details.get(name)):
                details[name] = 0
        out[key] = details
    return out
