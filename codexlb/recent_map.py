"""A bounded map that keeps the most recently used keys, in two generations of plain dicts.

Why not an LRU ``OrderedDict``: under steady delete-and-insert churn a full CPython dict resizes to three
times its live entries, so a table bounded at N entries settles at about twice the memory it had when it
first reached N (measured: the sticky map 8.7 → 14.4 MiB, the reasoning owners 17.4 → 28.8 MiB, steps
that came tens of minutes into a soak). Here a generation is only ever inserted into, then dropped whole,
so each grows the normal way to half the bound and memory is flat from the second generation on.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RecentMap(Generic[K, V]):
    """At most ``max_entries`` key → value pairs (values are never None); the ``ceil(max_entries / 2)``
    most recently used are always kept.

    Writes go to the current generation; when it holds half the bound it becomes the old one and the old
    one is dropped. A key read or written while in the old generation moves to the current one, so a key in
    use is never lost. Every operation is O(1) amortised; ``remove_if`` is O(n).
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._half = (max_entries + 1) // 2
        self._new: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def __len__(self) -> int:
        return len(self._new) + len(self._old)  # a key lives in one generation only

    def __contains__(self, key: object) -> bool:
        return key in self._new or key in self._old

    def get(self, key: K) -> V | None:
        """The value for ``key`` (which counts as a use), or None."""
        value = self._new.get(key)
        if value is None and key in self._old:
            value = self._old.pop(key)
            self._insert(key, value)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._old.pop(key, None)
        self._insert(key, value)

    def pop(self, key: K) -> V | None:
        value = self._new.pop(key, None)
        return self._old.pop(key, None) if value is None else value

    def remove_if(self, doomed: Callable[[V], bool]) -> int:
        """Drop every entry whose value is ``doomed``; returns how many."""
        removed = 0
        for generation in (self._new, self._old):
            keys = [key for key, value in generation.items() if doomed(value)]
            for key in keys:
                del generation[key]
            removed += len(keys)
        return removed

    def _insert(self, key: K, value: V) -> None:
        self._new[key] = value
        if len(self._new) >= self._half:
            self._old, self._new = self._new, {}
