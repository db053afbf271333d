"""Conversation stickiness: keep a conversation on the account that holds its upstream state and prompt cache.

``conversation_keys`` (pure) names a request's conversation in a few ways, best first; ``StickyTable`` remembers,
for a while and for a bounded number of conversations, which account served each key.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

MAX_KEY_VALUE = 256  # characters of a client-supplied id kept in a key; longer values are truncated

# (namespace, where, names): the first non-empty value among `names` gives the key `namespace:value`.
_KEY_SOURCES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("resp", "body", ("previous_response_id",)),
    ("turn", "header", ("x-codex-turn-state",)),
    ("session", "header", ("session_id", "session-id")),
    ("cache", "body", ("prompt_cache_key",)),
)
_HEADER_NAMES = frozenset(name for _, where, names in _KEY_SOURCES if where == "header" for name in names)


def conversation_keys(headers: Mapping[str, str], body: Mapping[str, Any] | None) -> list[str]:
    """The request's sticky keys in priority order::

        resp:<body previous_response_id>   the upstream response this request continues (its state lives there)
        turn:<header x-codex-turn-state>   Codex's opaque turn routing state
        session:<header session_id, else session-id>
        cache:<body prompt_cache_key>      where the prompt cache is warm

    Header names match case-insensitively (plain dicts too). Values are stripped; absent, empty and non-string
    values are skipped; values are truncated to ``MAX_KEY_VALUE`` characters so a hostile client cannot make
    the table hold large keys.
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname in _HEADER_NAMES and lname not in found:
            found[lname] = value
    if not isinstance(body, Mapping):
        body = {}
    keys: list[str] = []
    for namespace, where, names in _KEY_SOURCES:
        source: Mapping[str, Any] = found if where == "header" else body
        for name in names:
            value = source.get(name)
            if isinstance(value, str):
                value = value.strip()
                if value:
                    keys.append(f"{namespace}:{value[:MAX_KEY_VALUE]}")
                    break
    return keys


class StickyTable:
    """Conversation key -> account id, each entry living ``ttl_s`` seconds from its last ``put``, at most
    ``max_entries`` of them (the least recently used is evicted first; ``get`` and ``put`` count as use).

    Every operation is O(1) (``forget_account``: O(keys of that account)). Expired entries are dropped when
    looked up, when they reach the least-recently-used end during a ``put``, or on ``purge``; ``len`` counts
    entries held, expired or not. Time is passed in (``now``), never read. ``ttl_s=0`` turns stickiness off: an
    entry is expired the moment it is put, and the table stays empty.
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not ttl_s >= 0:  # also NaN
            raise ValueError("ttl_s must not be negative")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (account id, expires at)
        self._by_account: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str, now: float) -> str | None:
        """The account id for ``key``, or None if absent or expired (an expired entry is removed)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            self._remove(key, entry[0])
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, account_id: str, now: float) -> None:
        """Map ``key`` to ``account_id`` for ``ttl_s`` from ``now`` (replacing and refreshing any entry)."""
        entries = self._entries
        old = entries.get(key)
        if old is not None:
            if old[0] != account_id:
                self._unindex(key, old[0])
                self._by_account.setdefault(account_id, set()).add(key)
            entries.move_to_end(key)
        else:
            self._by_account.setdefault(account_id, set()).add(key)
        entries[key] = (account_id, now + self.ttl_s)
        # Drop expired entries at the old end (amortised O(1)), then evict past the bound.
        while entries:
            oldest_key, (oldest_account, expires_at) = next(iter(entries.items()))
            if expires_at > now and len(entries) <= self.max_entries:
                break
            self._remove(oldest_key, oldest_account)

    def forget_account(self, account_id: str) -> int:
        """Drop every entry pointing at ``account_id`` (it left the pool); returns how many."""
        keys = self._by_account.pop(account_id, None)
        if not keys:
            return 0
        for key in keys:
            del self._entries[key]
        return len(keys)

    def purge(self, now: float) -> int:
        """Drop every expired entry (O(n); for a periodic sweep); returns how many."""
        expired = [(k, aid) for k, (aid, expires_at) in self._entries.items() if expires_at <= now]
        for key, account_id in expired:
            self._remove(key, account_id)
        return len(expired)

    def _remove(self, key: str, account_id: str) -> None:
        del self._entries[key]
        self._unindex(key, account_id)

    def _unindex(self, key: str, account_id: str) -> None:
        keys = self._by_account.get(account_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_account[account_id]
