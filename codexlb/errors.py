"""OpenAI-shaped errors: the one way codexlb tells a client something failed.

Body: `{"error": {"message", "type", "code", "param"}}`. Handlers raise
`APIError`; the error middleware turns it, and any other failure, into a
response of this shape.
"""

from __future__ import annotations

from typing import Any, Mapping

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def type_for_status(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(message: str, type: str, code: str | None, param: str | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param, **(extra or {})}}


def client_fault(exc: BaseException | None) -> HttpProcessingError | None:
    """The malformed request behind `exc` (aiohttp's parse error, itself or as the cause of a body read that
    failed), when the fault is the client's."""
    while exc is not None and not isinstance(exc, HttpProcessingError):
        exc = exc.__cause__
    return exc


def fault_reason(fault: HttpProcessingError) -> str:
    """What was wrong, in one short line without the client's bytes that some of aiohttp's messages quote."""
    return (fault.message.strip() or type(fault).__name__).splitlines()[0].split(": b'")[0].rstrip(":. ")[:200]


def error_response(
    status: int,
    message: str,
    *,
    code: str | None,
    type: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    body = error_body(message, type or type_for_status(status), code, param, extra)
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class APIError(Exception):
    """Raise from a handler to answer the client with an OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type or type_for_status(status)
        self.param = param
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param, self.extra)

    def response(self) -> web.Response:
        return error_response(self.status, self.message, code=self.code, type=self.type, param=self.param,
                              headers=self.headers, extra=self.extra)


def from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, wrong method, body too large) in our shape."""
    if exc.status == 404:
        message, code = f"Unknown route: {request.method} {request.path}", "not_found"
    elif exc.status == 405:
        message, code = f"Method {request.method} is not allowed on {request.path}", "method_not_allowed"
    elif exc.status == 413:
        message, code = "Request body is too large", "payload_too_large"
    else:
        message, code = exc.reason, exc.reason.lower().replace(" ", "_")
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "location")}
    return error_response(exc.status, message, code=code, headers=headers)
