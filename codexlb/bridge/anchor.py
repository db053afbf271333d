"""The HTTP bridge's own anchoring: the Codex CLI resends the whole conversation over HTTP, and when
that input starts with exactly what the socket's last response saw and said, upstream only needs the
new items and `previous_response_id`.

Items are compared by a digest of their canonical JSON: keys sorted, and null fields left out (the CLI
echoes a reasoning item with `"content": null` that upstream sent without it; upstream reads the two
alike). Any other difference, however small, is a mismatch, and a mismatch never trims: the request
goes up whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import orjson


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def digest(item: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(_canonical(item), option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Anchor:
    """A completed response on a socket: its id, and the digests of its input followed by its output."""

    response_id: str
    prefix: tuple[bytes, ...]

    @classmethod
    def after(cls, response_id: str, sent: Sequence[bytes], output: Sequence[Any]) -> "Anchor":
        """`sent`: digests of the full input of the request (not just the delta that went up)."""
        return cls(response_id, (*sent, *(digest(item) for item in output)))

    def delta(self, full: Sequence[bytes]) -> int | None:
        """How many leading items of `full` the anchor covers, or None when it does not extend it."""
        n = len(self.prefix)
        if len(full) > n and tuple(full[:n]) == self.prefix:
            return n
        return None
