"""Conversation state as the real backend keeps it with `store: false`.

A response can be continued only from the backend that served it: here, the
same (account, turn state) pair, and only for `ttl_s` after it was made.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Stored:
    items: list[Any]
    """The whole context after this response: every input item of the chain, then its output."""
    tokens: int
    expires_at: float


class StateStore:
    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, str], Stored] = OrderedDict()

    def put(self, account_id: str, turn_state: str, response_id: str, items: list[Any], tokens: int) -> None:
        key = (account_id, turn_state, response_id)
        self._entries[key] = Stored(items, tokens, time.monotonic() + self.ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, account_id: str, turn_state: str, response_id: str) -> Stored | None:
        key = (account_id, turn_state, response_id)
        stored = self._entries.get(key)
        if stored is None:
            return None
        if stored.expires_at <= time.monotonic():
            del self._entries[key]
            return None
        return stored

    def drop(self, account_id: str | None = None, response_id: str | None = None) -> int:
        """Forget state, as a backend restart would; returns how many responses were lost."""
        doomed = [
            key for key in self._entries
            if (account_id is None or key[0] == account_id) and (response_id is None or key[2] == response_id)
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def expire_all(self) -> None:
        """Age every entry past its TTL (tests of expiry without waiting)."""
        for stored in self._entries.values():
            stored.expires_at = 0.0

    def __len__(self) -> int:
        return len(self._entries)
