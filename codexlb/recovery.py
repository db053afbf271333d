"""What to do when an upstream socket is lost: the decision alone, no I/O (the bridges act on it).

The Codex CLI answers a failed anchored request by resending the whole conversation (≈70K instead of
≈2–3K tokens a turn), and a 400 `previous_response_not_found` over HTTP ends its turn. So a lost socket
is made invisible wherever the client cannot have noticed, and retriable where it can:

| Lost when | Attempts / time left | Action | The client sees |
|---|---|---|---|
| between requests (nothing in flight) | any | `reconnect`: same account, same turn state, before the next send | nothing |
| a request is in flight, the client has no byte of it yet | yes | `resend`: reconnect as above, send the held request again | one normal response |
| a request is in flight, the client has no byte of it yet | no | `fail` `upstream_unavailable` | HTTP 502 / WS `response.failed`, retriable |
| the client already has bytes of the response | — | `fail` `stream_incomplete`; the next request reconnects | `response.failed`, retriable |

A request upstream refuses before the client saw anything (`on_refusal`), on a socket still up:

| Refusal | Anchored | Its history in the transcript | Action |
|---|---|---|---|
| `previous_response_not_found` | yes | yes, not rebuilt yet | `rebuild`: the whole input, no anchor, same socket |
| 429, 5xx, `usage_limit_reached`, account gone | no | — | `move` to another account (while accounts are left) |
| 429, 5xx, `usage_limit_reached`, account gone | yes | yes | `move` with the whole input, without reasoning items only this account can read |
| anything else, or nothing known | — | — | `pass` the refusal on (the Codex CLI resends the whole history once) |

An HTTP request that carries its own `previous_response_id` upstream no longer knows (`LostAnchors`):
answered with a retriable 502 `upstream_unavailable` the first `LOST_ANCHOR_RETRIES` times (a reconnect
may yet find the state), then once with the canonical 400 `previous_response_not_found`, so the client
resends the whole conversation instead of retrying for ever; then the count starts over.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

# Bounds on transparent recovery of one request: attempts, and seconds since it was first sent.
MAX_RESENDS = 3
RESEND_BUDGET_S = 30.0
# Retriable answers for one lost anchor before the 400 that makes the client resend everything.
LOST_ANCHOR_RETRIES = 2


class Phase(enum.Enum):
    IDLE = "idle"                    # no request in flight on the socket
    BEFORE_BYTES = "before_bytes"    # in flight; nothing of its response has reached the client
    AFTER_BYTES = "after_bytes"      # in flight; the client has part of the response


class Action(enum.Enum):
    RECONNECT = "reconnect"
    RESEND = "resend"
    FAIL = "fail"
    REBUILD = "rebuild"
    MOVE = "move"
    PASS = "pass"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    code: str | None = None  # for FAIL: the error code the client gets

    @property
    def reason(self) -> str:
        return self.action.value if self.code is None else f"{self.action.value}:{self.code}"


def on_socket_lost(phase: Phase, resends: int, elapsed_s: float, *, max_resends: int = MAX_RESENDS,
                   budget_s: float = RESEND_BUDGET_S) -> Decision:
    """The upstream socket closed, broke or went silent past its bound."""
    if phase is Phase.IDLE:
        return Decision(Action.RECONNECT)
    if phase is Phase.AFTER_BYTES:
        return Decision(Action.FAIL, "stream_incomplete")
    if resends < max_resends and elapsed_s < budget_s:
        return Decision(Action.RESEND)
    return Decision(Action.FAIL, "upstream_unavailable")


def on_refusal(*, lost_state: bool, account_failed: bool, anchored: bool, history_known: bool, rebuilt: bool,
               accounts_left: bool) -> Decision:
    """Upstream refused a request before the client saw a byte of its answer. `lost_state`: the refusal
    is `previous_response_not_found`; `account_failed`: it is one another account may not give (429, 5xx,
    quota, deactivated); `history_known`: the transcript can rebuild the anchored request's whole input."""
    if lost_state and anchored and history_known and not rebuilt:
        return Decision(Action.REBUILD)
    if account_failed and accounts_left and (not anchored or history_known):
        return Decision(Action.MOVE)
    return Decision(Action.PASS)


class LostAnchors:
    """How often each lost anchor was answered retriably (bounded: the oldest are forgotten)."""

    def __init__(self, retries: int = LOST_ANCHOR_RETRIES, max_anchors: int = 10_000) -> None:
        self._retries = retries
        self._max = max_anchors
        self._counts: OrderedDict[str, int] = OrderedDict()

    def answer(self, anchor: str) -> Decision:
        """`fail` `upstream_unavailable` (retriable), or `pass` (the canonical 400) once the retries are spent."""
        count = self._counts.pop(anchor, 0) + 1
        if count > self._retries:
            return Decision(Action.PASS)
        self._counts[anchor] = count
        while len(self._counts) > self._max:
            self._counts.popitem(last=False)
        return Decision(Action.FAIL, "upstream_unavailable")
