"""What the sim says each client request of one conversation cost, from its request records
(`GET /__sim/requests`): the figures codexlb's per-conversation record must show.

A client request reaches the sim as one or more attempts: those that failed (the anchor was lost, the socket
dropped) and the one that answered. A socket the sim dropped after an answer (`close_after_response`) costs
the next request a reconnect, and no attempt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The sim refusing an anchor it no longer has.
NOT_FOUND = "previous_response_not_found"


@dataclass
class SimRequest:
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # The socket the previous request answered on was dropped after its answer.
    reconnected: bool = False

    @property
    def answered(self) -> dict[str, Any]:
        return self.attempts[-1]

    @property
    def usage(self) -> dict[str, Any]:
        return self.answered["usage"]

    @property
    def input_tokens(self) -> int:
        return self.usage["input_tokens"]

    @property
    def cached_tokens(self) -> int:
        return self.usage["input_tokens_details"]["cached_tokens"]

    @property
    def output_tokens(self) -> int:
        return self.usage["output_tokens"]

    @property
    def reasoning_tokens(self) -> int:
        return self.usage["output_tokens_details"]["reasoning_tokens"]

    @property
    def upstream_items(self) -> int:
        return sum(a["n_input"] for a in self.attempts)

    @property
    def upstream_bytes(self) -> int:
        return sum(a["body_bytes"] for a in self.attempts)

    @property
    def lost_anchor(self) -> bool:
        """Upstream had forgotten the conversation: the input went up whole."""
        return any(a["error_code"] == NOT_FOUND for a in self.attempts[:-1])

    @property
    def recoveries(self) -> int:
        return len(self.attempts) - 1 + self.reconnected

    @property
    def recovery_bytes(self) -> int:
        """What the attempts after the first added upstream."""
        return sum(a["body_bytes"] for a in self.attempts[1:])


def sim_requests(records: list[dict[str, Any]], faults: list[dict[str, Any]]) -> list[SimRequest]:
    """The sim's records (oldest first) grouped into client requests, given the faults it was set (`GET
    /__sim/faults`); an unanswered tail is left out."""
    after_answer = {f["id"] for f in faults if f["action"] == "close_after_response"}
    grouped: list[SimRequest] = []
    current, reconnect = SimRequest(), False
    for record in records:
        current.attempts.append(record)
        if record["outcome"] != "completed":
            continue
        current.reconnected = reconnect
        grouped.append(current)
        reconnect = not after_answer.isdisjoint(record["faults"])
        current = SimRequest()
    return grouped
