"""What each relayed response saw and said, so a conversation can go on when upstream lost its state.

For every response codexlb relays on a WebSocket, it keeps the items the request carried, the
`previous_response_id` it was anchored on, and the output items upstream produced. Following the
anchors back gives the whole input the client would have sent without any anchor (`history`).

Bounded twice, in bytes: per conversation (its oldest responses go first) and in total (the least
recently used responses of any conversation go first). The items are kept as their JSON, not as Python
objects (which take about 3.7 times as much), and each response counts `BOOKKEEPING` bytes for its ids,
links and table entries besides, so a budget is the memory used; a history is decoded only when a
recovery asks for it. A chain with a link gone is a miss, never a guess. Kept in memory only: after a restart the upstream sockets are gone too, so every
conversation starts over with the client's next request, and nothing stored could be anchored on.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from codexlb.recent_map import RecentMap


# Bytes a kept response costs beyond its items' JSON (measured: about 520), counted against the budgets.
BOOKKEEPING = 512


@dataclass(slots=True)
class _Response:
    conversation: str
    previous: str | None
    items: bytes  # a JSON array: the request's items, then its output
    size: int
    # Bytes of the whole conversation up to and including its output, as the items of a JSON array (each item
    # and its comma): what a request anchored on it would add to its input sent whole. None if a link was missing.
    total: int | None


class Transcripts:
    def __init__(self, max_bytes: int, max_conversation_bytes: int) -> None:
        self._max = max_bytes
        self._max_conversation = max_conversation_bytes
        self._responses: OrderedDict[str, _Response] = OrderedDict()  # least recently used first
        self._conversations: dict[str, OrderedDict[str, None]] = {}  # per conversation, oldest first
        self._conversation_bytes: dict[str, int] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._responses)

    def record(self, conversation: str, response_id: str, previous: str | None, items: list[Any],
               output: list[Any]) -> None:
        parts = [orjson.dumps(item) for item in (*items, *output)]
        own = sum(map(len, parts))
        size = BOOKKEEPING + own
        before = 0 if previous is None else self.history_bytes(previous)
        total = None if before is None else before + own + len(parts)
        if size > self._max_conversation or size > self._max:
            return  # one response larger than a whole budget: keeping it would evict everything else
        self._forget(response_id)
        self._responses[response_id] = _Response(conversation, previous, b"[" + b",".join(parts) + b"]", size, total)
        self._conversations.setdefault(conversation, OrderedDict())[response_id] = None
        self._conversation_bytes[conversation] = self._conversation_bytes.get(conversation, 0) + size
        self.bytes += size
        while self._conversation_bytes[conversation] > self._max_conversation:
            self._evict(next(iter(self._conversations[conversation])))
        while self.bytes > self._max:
            self._evict(next(iter(self._responses)))

    def history(self, response_id: str) -> list[Any] | None:
        """The whole conversation up to and including this response's output; None if a link is missing."""
        chain: list[_Response] = []
        current: str | None = response_id
        while current is not None:
            response = self._responses.get(current)
            if response is None:
                self.misses += 1
                return None
            chain.append(response)
            current = response.previous
        self.hits += 1
        for used in (response_id, *(r.previous for r in chain if r.previous)):
            self._responses.move_to_end(used)
        items: list[Any] = []
        for response in reversed(chain):
            items.extend(orjson.loads(response.items))
        return items

    def history_bytes(self, response_id: str) -> int | None:
        """The size of `history(response_id)` as items of a JSON array (each item and its comma), without decoding
        it; None when the response is not kept, or a link of its chain was missing when it was."""
        response = self._responses.get(response_id)
        return None if response is None else response.total

    def stats(self) -> dict[str, int]:
        return {"responses": len(self._responses), "conversations": len(self._conversations), "bytes": self.bytes,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}

    def _evict(self, response_id: str) -> None:
        self.evictions += 1
        self._forget(response_id)

    def _forget(self, response_id: str) -> None:
        response = self._responses.pop(response_id, None)
        if response is None:
            return
        self.bytes -= response.size
        conversation = response.conversation
        self._conversation_bytes[conversation] -= response.size
        del self._conversations[conversation][response_id]
        if not self._conversations[conversation]:
            del self._conversations[conversation]
            del self._conversation_bytes[conversation]


# Upstream's refusal of reasoning another account sealed.
SEALED_REFUSED = "invalid_encrypted_content"
_NOBODY = ""  # the owner of sealed items an account refused: not one this process knows


class ItemOwners:
    """Which account produced each reasoning item with `encrypted_content` (by item id; the newest
    `max_items`), so a conversation that moved accounts stops sending the new one what it cannot open."""

    def __init__(self, max_items: int = 200_000) -> None:
        self._owner: RecentMap[str, str] = RecentMap(max_items)

    def note(self, output: Any, account_id: str) -> None:
        for item in output if isinstance(output, list) else ():
            if _sealed(item) and isinstance(item.get("id"), str):
                self._owner[item["id"]] = account_id

    def refused(self, items: list[Any], account_id: str) -> bool:
        """Upstream on `account_id` could not open sealed reasoning in `items` (SEALED_REFUSED): it came from
        another account this process has no record of (a conversation placed anew after an upgrade, or while the
        shared sticky map could not be read). Those items are marked as no account's to read from here on; True
        when any was marked, so a retry without them may succeed."""
        marked = False
        for item in items:
            if _sealed(item) and isinstance(item_id := item.get("id"), str) and not self._foreign(item, account_id):
                self._owner[item_id] = _NOBODY
                marked = True
        return marked

    def readable_by(self, items: list[Any], account_id: str) -> list[Any] | None:
        """`items` less those another account sealed; None when there is none (the common case)."""
        if not any(self._foreign(i, account_id) for i in items):
            return None
        return [i for i in items if not self._foreign(i, account_id)]

    def _foreign(self, item: Any, account_id: str) -> bool:
        if not _sealed(item) or not isinstance(item_id := item.get("id"), str):
            return False
        owner = self._owner.get(item_id)
        return owner is not None and owner != account_id


def _sealed(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "reasoning" and bool(item.get("encrypted_content"))


def without_account_items(items: list[Any]) -> list[Any]:
    """The history another account can read: reasoning items carry `encrypted_content` only the account
    that produced them can open, so they stay behind."""
    return [item for item in items if not _sealed(item)]
