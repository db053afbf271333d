"""Conversation stickiness: keep a conversation on the account that holds its upstream state and prompt cache.

``conversation_keys`` (pure) names a request's conversation in a few ways, best first; ``StickyTable`` remembers,
for a while and for a bounded number of conversations, which account served each key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from codexlb.recent_map import RecentMap

MAX_KEY_VALUE = 256  # characters of a client-supplied id kept in a key; longer values are truncated
SEEN_EVERY_S = 60.0  # a key still in use tells the shared map so at most this often

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


def conversation_of(keys: list[str]) -> str | None:
    """The conversation a request belongs to, for the ledger: its session id, else its prompt_cache_key (for the
    Codex CLI both are the session's uuid)."""
    for key in keys:
        if key.startswith(("session:", "cache:")):
            return key.partition(":")[2]
    return None


def turn_of(payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> str | None:
    """The Codex turn a request serves: `client_metadata.turn_id`, else the `turn_id` of the
    `x-codex-turn-metadata` JSON (the body's copy, else the header's); None for a prewarm (an empty id) or none."""
    metadata = payload.get("client_metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    turn = metadata.get("turn_id")
    if turn is None:
        raw = metadata.get("x-codex-turn-metadata")
        if raw is None and headers is not None:
            raw = headers.get("x-codex-turn-metadata")
        try:
            parsed = orjson.loads(raw) if isinstance(raw, str) else None
        except orjson.JSONDecodeError:
            parsed = None
        turn = parsed.get("turn_id") if isinstance(parsed, dict) else None
    return turn[:MAX_KEY_VALUE] if isinstance(turn, str) and turn else None


class StickyTable:
    """Conversation key -> account id, each entry living ``ttl_s`` seconds from its last ``put``; at most
    ``max_entries`` of them, and always the most recently used half (``get`` and ``put`` count as use).

    Every operation is O(1) (``forget_account``: O(n), it runs when an account leaves the pool). An expired
    entry is dropped when looked up, else with its generation (see ``RecentMap``). Time is passed in
    (``now``), never read. ``ttl_s=0`` turns stickiness off: the table stays empty.
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        if not ttl_s >= 0:  # also NaN
            raise ValueError("ttl_s must not be negative")
        self.ttl_s = ttl_s
        # key -> (account, expires at, when the shared map last heard of it)
        self._entries: RecentMap[str, tuple[str, float, float]] = RecentMap(max_entries)

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
            self._entries.pop(key)
            return None
        return entry[0]

    def put(self, key: str, account_id: str, now: float, *, shared: bool = False) -> bool:
        """Map ``key`` to ``account_id`` for ``ttl_s`` from ``now`` (replacing and refreshing any entry).

        Returns whether the shared map should hear of it: a new or moved key, or one it last heard of
        ``SEEN_EVERY_S`` ago or more. ``shared``: the entry comes from the shared map (seen at ``now``)."""
        if self.ttl_s <= 0:
            return False
        old = self._entries.get(key)
        due = not shared and (old is None or old[0] != account_id or now - old[2] >= SEEN_EVERY_S)
        self._entries[key] = (account_id, now + self.ttl_s, now if due or shared or old is None else old[2])
        return due

    def forget_account(self, account_id: str) -> int:
        """Drop every entry pointing at ``account_id`` (it left the pool); returns how many."""
        return self._entries.remove_if(lambda entry: entry[0] == account_id)
