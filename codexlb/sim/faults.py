"""Scriptable faults: what the sim should do wrong, to which requests, and how often.

A fault matches requests by account, transport, anchoring, request kind and
turn; it fires on a share of them, from the nth match on, a limited number of
times. Each request gets one `Plan`: delays, an optional state drop, and at
most one disruptive action.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ACTIONS = (
    "status",                # answer an HTTP status (WS: an error frame) instead of a response
    "failed",                # after `after_events` events, end with response.failed carrying `code`
    "close",                 # after `after_events` events, drop the connection (TCP abort / WS close)
    "end_without_terminal",  # after `after_events` events, end the stream cleanly with no terminal event
    "stall",                 # after `after_events` events, send nothing more and never end
    "close_after_response",  # complete the response, then drop the connection (between turns)
    "drop_state",            # forget the backend state first: a genuine previous_response_not_found
    "delay",                 # wait `first_byte_ms` before the first event, events `between_events_ms` apart,
                             # `end_ms` between the last event and the end of the body (HTTP; for an error
                             # answer, between the two halves of its body)
)
TRANSPORTS = ("http", "ws")
# The request kind of a WebSocket upgrade: `status` refuses it with that HTTP status, `delay` holds it.
HANDSHAKE = "handshake"
# The JSON types each field a spec may set accepts (NoneType: the field may be null).
_STR, _INT, _NUM, _NULL = (str,), (int,), (int, float), (type(None),)
_FIELD_TYPES = {
    "account": _STR + _NULL, "transport": _STR + _NULL, "anchored": (bool, type(None)), "kind": _STR + _NULL,
    "turn_id": _STR + _NULL, "nth": _INT, "times": _INT + _NULL, "share": _NUM, "status": _INT,
    "code": _STR + _NULL, "message": _STR + _NULL, "retry_after": _NUM + _NULL, "after_events": _INT,
    "close_code": _INT + _NULL, "first_byte_ms": _NUM, "between_events_ms": _NUM, "end_ms": _NUM,
}


@dataclass(slots=True)
class Fault:
    action: str
    account: str | None = None
    transport: str | None = None
    anchored: bool | None = None
    kind: str | None = None
    turn_id: str | None = None
    nth: int = 1
    times: int | None = 1
    share: float = 1.0
    status: int = 500
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None
    after_events: int = 0
    close_code: int | None = None
    first_byte_ms: float = 0.0
    between_events_ms: float = 0.0
    end_ms: float = 0.0
    id: str = ""
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        for name, kinds in _FIELD_TYPES.items():
            value = getattr(self, name)
            # bool is an int in Python, never in JSON.
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"{name} has the wrong type ({type(value).__name__})")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        if self.transport is not None and self.transport not in TRANSPORTS:
            raise ValueError("transport must be http or ws")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError("share must be between 0 and 1")
        if self.nth < 1 or (self.times is not None and self.times < 0) or self.after_events < 0:
            raise ValueError("nth must be >= 1; times and after_events must not be negative")
        if self.action == "status" and not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status")
        # 1004-1006 and 1015 are reserved: they may never travel in a close frame.
        if self.close_code is not None and (
            not 1000 <= self.close_code <= 4999 or self.close_code in (1004, 1005, 1006, 1015)
        ):
            raise ValueError("close_code must be a WebSocket close code a server may send (1000-4999)")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Fault":
        allowed = {f.name for f in fields(cls)} - {"id", "matched", "fired"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, info: "RequestInfo") -> bool:
        return (
            (self.account is None or self.account == info.account_id)
            and (self.transport is None or self.transport == info.transport)
            and (self.anchored is None or self.anchored == info.anchored)
            # A WebSocket handshake is hit only by faults that name it: any other fault is for requests.
            and (self.kind == info.kind if self.kind is not None or info.kind == HANDSHAKE else True)
            and (self.turn_id is None or self.turn_id == info.turn_id)
        )


@dataclass(slots=True, frozen=True)
class RequestInfo:
    account_id: str
    transport: str
    anchored: bool
    kind: str
    turn_id: str | None


@dataclass(slots=True)
class Plan:
    first_byte_s: float = 0.0
    between_events_s: float = 0.0
    end_s: float = 0.0
    drop_state: bool = False
    action: Fault | None = None
    fired: list[str] = field(default_factory=list)


class FaultBook:
    def __init__(self, seed: int = 0) -> None:
        self._faults: dict[str, Fault] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random(seed)

    def add(self, fault: Fault) -> Fault:
        fault.id = fault.id or f"f{next(self._ids)}"
        self._faults[fault.id] = fault
        return fault

    def remove(self, fault_id: str) -> bool:
        return self._faults.pop(fault_id, None) is not None

    def clear(self) -> None:
        self._faults.clear()

    def list(self) -> list[Fault]:
        return list(self._faults.values())

    def plan(self, info: RequestInfo) -> Plan:
        plan = Plan()
        for fault in self._faults.values():
            if not fault.matches(info):
                continue
            fault.matched += 1
            if fault.matched < fault.nth or (fault.times is not None and fault.fired >= fault.times):
                continue
            if fault.share < 1.0 and self._rng.random() >= fault.share:
                continue
            if fault.action == "delay":
                plan.first_byte_s = max(plan.first_byte_s, fault.first_byte_ms / 1000)
                plan.between_events_s = max(plan.between_events_s, fault.between_events_ms / 1000)
                plan.end_s = max(plan.end_s, fault.end_ms / 1000)
            elif fault.action == "drop_state":
                plan.drop_state = True
            elif plan.action is None:
                plan.action = fault
            else:
                # One disruption per request; a later fault waits for a later request.
                continue
            fault.fired += 1
            plan.fired.append(fault.id)
        return plan
