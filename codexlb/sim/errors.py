"""The backend's error shapes, raised anywhere in the sim and rendered per transport."""

from __future__ import annotations

from typing import Any

from codexlb.errors import error_body, type_for_status


class SimError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None, type: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error_body(message, type or type_for_status(status), code, param, extra)["error"]
        self.headers = headers or {}
        # HTTP only: how long after the first half of the body its second half comes (a `delay` fault's end_ms).
        self.split_s = 0.0

    @property
    def code(self) -> str | None:
        return self.error.get("code")

    def http_body(self) -> dict[str, Any]:
        return {"error": self.error}

    def ws_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "error", "status": self.status, "error": self.error}
        if self.headers:
            frame["headers"] = {k.lower(): v for k, v in self.headers.items()}
        return frame


def bad_request(message: str, code: str | None, param: str | None = None) -> SimError:
    return SimError(400, message, code=code, param=param)


def previous_response_not_found(response_id: str) -> SimError:
    return SimError(400, f"Previous response with id '{response_id}' not found.",
                    code="previous_response_not_found", param="previous_response_id")
