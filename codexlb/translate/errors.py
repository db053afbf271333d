"""The two ways a translation fails, and how a terminal failure event reads."""

from __future__ import annotations

from typing import Any

from codexlb.errors import error_body


class TranslationError(Exception):
    """A client request that cannot be translated: the caller answers 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None, *, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, "invalid_request_error", self.code, self.param)


class UpstreamFailed(Exception):
    """The upstream stream ended in failure (`response.failed`, `error`) or without a terminal event.

    `status` and `type` are set only when upstream said them (a WebSocket `error` frame carries both).
    """

    def __init__(self, code: str, message: str, *, status: int | None = None, type: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.type = type

    def body(self) -> dict[str, Any]:
        """An OpenAI-shaped error body: also what a chat stream sends as its last `data:` before [DONE]."""
        return error_body(self.message, self.type or "server_error", self.code)


INCOMPLETE_MESSAGE = "The upstream stream ended before the response was complete."


def stream_incomplete() -> UpstreamFailed:
    return UpstreamFailed("stream_incomplete", INCOMPLETE_MESSAGE)


def _str(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def failure_of(event: dict[str, Any]) -> UpstreamFailed | None:
    """The failure a terminal failure event carries, or None for any other event.

    Shapes: `response.failed` with `response.error = {code, message}`; the Responses SSE `error` event
    `{type: "error", code, message, param}`; the WebSocket error frame `{type: "error", status, error: {...}}`.
    """
    kind = event.get("type")
    if kind == "response.failed":
        response = event.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        error = error if isinstance(error, dict) else {}
        return UpstreamFailed(_str(error.get("code"), "server_error"),
                              _str(error.get("message"), "The upstream response failed."))
    if kind == "error":
        nested = event.get("error")
        error = nested if isinstance(nested, dict) else event
        status = event.get("status")
        error_type = error.get("type")
        return UpstreamFailed(
            _str(error.get("code"), "server_error"),
            _str(error.get("message"), "The upstream stream reported an error."),
            status=status if isinstance(status, int) and not isinstance(status, bool) else None,
            # The SSE event's own `type` is "error", never an error type.
            type=error_type if nested is not None and isinstance(error_type, str) else None,
        )
    return None
