"""The two-generation recency map, and the flat memory of the tables built on it."""

from __future__ import annotations

import tracemalloc

import pytest

from codexlb.pool.sticky import StickyTable
from codexlb.recent_map import RecentMap
from codexlb.transcript import ItemOwners


def test_holds_at_most_the_bound_and_always_the_newest_half():
    for bound in (1, 2, 3, 10, 11):
        m: RecentMap[int, int] = RecentMap(bound)
        for i in range(5 * bound):
            m[i] = i
            assert len(m) <= bound
            newest = range(max(0, i + 1 - (bound + 1) // 2), i + 1)
            assert all(k in m for k in newest), (bound, i)


def test_a_key_in_use_is_never_lost():
    m: RecentMap[str, int] = RecentMap(4)
    m["kept"] = 0
    for i in range(100):
        m[f"k{i}"] = i
        assert m.get("kept") == 0  # each read moves it to the current generation


def test_a_key_lives_in_one_generation_only():
    m: RecentMap[str, int] = RecentMap(4)
    m["a"] = 1
    m["b"] = 2  # rotates: a and b are old
    m["a"] = 3  # rewritten: moves forward, its old copy goes
    assert len(m) == 2 and m.get("a") == 3
    assert m.pop("a") == 3 and "a" not in m and m.pop("a") is None
    assert m.get("b") == 2 and len(m) == 1


def test_remove_if_drops_from_both_generations():
    m: RecentMap[int, str] = RecentMap(10)
    for i in range(8):
        m[i] = "even" if i % 2 == 0 else "odd"
    assert m.remove_if(lambda v: v == "odd") == 4
    assert sorted(k for k in range(8) if k in m) == [0, 2, 4, 6]
    assert m.remove_if(lambda v: v == "odd") == 0


def test_rejects_a_bound_below_one():
    with pytest.raises(ValueError):
        RecentMap(0)


def _sticky_churn(bound):
    table = StickyTable(bound, 1e9)
    return lambda i: table.put(f"session:{i:012d}", f"acct-{i % 7}", now=i)


def _owners_churn(bound):
    owners = ItemOwners(bound)
    return lambda i: owners.note([{"type": "reasoning", "encrypted_content": "x", "id": f"rs_{i:020d}"}], "acct-1")


@pytest.mark.parametrize("make", [_sticky_churn, _owners_churn], ids=["sticky", "owners"])
def test_a_full_table_takes_no_more_memory_under_churn(make):
    """An LRU OrderedDict stepped up by a sixth here (to about twice its table) some way past its bound."""
    bound = 20_000
    tracemalloc.start()
    try:
        insert = make(bound)
        for i in range(bound):
            insert(i)
        filled = tracemalloc.get_traced_memory()[1]  # the peak while reaching the bound
        tracemalloc.reset_peak()
        for i in range(bound, 6 * bound):
            insert(i)
        churned = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert churned <= filled * 1.05, (filled, churned)
