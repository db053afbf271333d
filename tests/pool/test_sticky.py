"""Stickiness: the bounded TTL table and the conversation keys taken from a request."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from codexlb.pool.sticky import MAX_KEY_VALUE, StickyTable, conversation_keys

# --- StickyTable ----------------------------------------------------------------------------------------------


def test_get_returns_what_was_put():
    t = StickyTable(10, 60)
    t.put("k", "acct-1", now=0)
    assert t.get("k", now=1) == "acct-1"
    assert t.get("other", now=1) is None
    assert len(t) == 1


def test_entry_expires_after_ttl_and_is_removed():
    t = StickyTable(10, 60)
    t.put("k", "acct-1", now=100)
    assert t.get("k", now=159.999) == "acct-1"
    assert t.get("k", now=160) is None  # expires_at = 160: gone at 160
    assert len(t) == 0
    assert "k" not in t
    assert t.get("k", now=100) is None  # removed, not merely hidden


def test_get_does_not_extend_ttl_but_put_does():
    t = StickyTable(10, 60)
    t.put("k", "a", now=0)
    assert t.get("k", now=50) == "a"
    assert t.get("k", now=60) is None
    t.put("k", "a", now=100)
    t.put("k", "a", now=150)  # refresh
    assert t.get("k", now=209) == "a"
    assert t.get("k", now=210) is None


def test_put_replaces_the_account():
    t = StickyTable(10, 60)
    t.put("k", "a", now=0)
    t.put("k", "b", now=1)
    assert t.get("k", now=2) == "b"
    assert len(t) == 1
    assert t.forget_account("a") == 0  # the old mapping is no longer indexed under a
    assert t.get("k", now=2) == "b"


def test_the_least_recently_used_go_first():
    t = StickyTable(4, 1000)
    t.put("a", "acct-a", now=0)
    t.put("b", "acct-b", now=1)
    assert t.get("a", now=2) == "acct-a"  # used: a outlives b
    t.put("c", "acct-c", now=3)
    assert [k for k in "abc" if k in t] == ["a", "c"]
    t.put("d", "acct-d", now=4)
    t.put("e", "acct-e", now=5)  # the newest two always stay
    assert [k for k in "abcde" if k in t] == ["d", "e"]


def test_eviction_unindexes_the_account():
    t = StickyTable(1, 1000)
    t.put("a", "acct-1", now=0)
    t.put("b", "acct-2", now=1)  # evicts a
    assert t.forget_account("acct-1") == 0
    assert t.get("b", now=2) == "acct-2"


def test_forget_account():
    t = StickyTable(10, 60)
    t.put("k1", "a", now=0)
    t.put("k2", "b", now=0)
    t.put("k3", "a", now=0)
    assert t.forget_account("a") == 2
    assert t.get("k1", now=1) is None
    assert t.get("k3", now=1) is None
    assert t.get("k2", now=1) == "b"
    assert len(t) == 1
    assert t.forget_account("a") == 0
    assert t.forget_account("never") == 0
    t.put("k1", "a", now=2)  # the account can come back
    assert t.get("k1", now=3) == "a"


def test_table_stays_bounded_under_many_keys():
    t = StickyTable(100, 1e9)
    for i in range(10_000):
        t.put(f"k{i}", f"acct-{i % 7}", now=i)
        assert len(t) <= 100
    assert all(t.get(f"k{i}", now=0) == f"acct-{i % 7}" for i in range(9950, 10_000))  # the newest half stays
    assert t.get("k9000", now=0) is None
    held = len(t)
    assert sum(t.forget_account(f"acct-{i}") for i in range(7)) == held
    assert len(t) == 0


def test_zero_ttl_turns_stickiness_off():
    t = StickyTable(10, 0)
    t.put("k", "a", now=5)
    assert t.get("k", now=5) is None
    assert len(t) == 0
    assert t.forget_account("a") == 0


@pytest.mark.parametrize(("max_entries", "ttl_s"), [(0, 10), (-1, 10), (10, -5), (10, float("nan"))])
def test_rejects_bad_bounds(max_entries, ttl_s):
    with pytest.raises(ValueError):
        StickyTable(max_entries, ttl_s)


# --- conversation_keys ----------------------------------------------------------------------------------------


def test_all_keys_in_priority_order():
    headers = {"x-codex-turn-state": "ts1", "session_id": "s1", "content-type": "application/json"}
    body = {"previous_response_id": "resp_1", "prompt_cache_key": "pc1", "model": "gpt-5"}
    assert conversation_keys(headers, body) == ["resp:resp_1", "turn:ts1", "session:s1", "cache:pc1"]


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({}, None, []),
        ({}, {}, []),
        ({"session_id": "s1"}, None, ["session:s1"]),
        ({"session-id": "s2"}, None, ["session:s2"]),
        ({"session-id": "s2", "session_id": "s1"}, None, ["session:s1"]),  # session_id wins
        ({"session_id": "", "session-id": "s2"}, None, ["session:s2"]),     # empty falls through
        ({"session_id": "   "}, None, []),
        ({"Session_Id": "s1", "X-Codex-Turn-State": "t"}, None, ["turn:t", "session:s1"]),  # any case
        ({}, {"prompt_cache_key": "pc"}, ["cache:pc"]),
        ({}, {"previous_response_id": "r", "prompt_cache_key": ""}, ["resp:r"]),
        ({}, {"previous_response_id": None, "prompt_cache_key": 123}, []),  # non-strings skipped
        ({}, {"previous_response_id": {"x": 1}}, []),
        ({}, ["not", "a", "mapping"], []),
        ({"previous_response_id": "r"}, None, []),  # a header is not the body field
        ({}, {"session_id": "s", "x-codex-turn-state": "t"}, []),  # body fields are not headers
        ({"session_id": " s1 "}, {"prompt_cache_key": " pc "}, ["session:s1", "cache:pc"]),
    ],
)
def test_key_extraction(headers, body, expected):
    assert conversation_keys(headers, body) == expected


def test_case_insensitive_multidict_headers():
    headers = CIMultiDict([("X-Codex-Turn-State", "t1"), ("Session-Id", "s1"), ("X-Codex-Turn-State", "t2")])
    assert conversation_keys(headers, None) == ["turn:t1", "session:s1"]


def test_values_are_length_capped():
    long = "x" * 100_000
    keys = conversation_keys({"x-codex-turn-state": long, "session_id": long},
                             {"previous_response_id": long, "prompt_cache_key": long})
    assert keys == [f"{ns}:{'x' * MAX_KEY_VALUE}" for ns in ("resp", "turn", "session", "cache")]
    assert MAX_KEY_VALUE == 256


def test_value_at_the_cap_is_kept_whole():
    exact = "y" * MAX_KEY_VALUE
    assert conversation_keys({}, {"prompt_cache_key": exact}) == [f"cache:{exact}"]
    assert conversation_keys({}, {"prompt_cache_key": exact + "z"}) == [f"cache:{exact}"]


def test_keys_work_with_the_table():
    t = StickyTable(10, 60)
    first = conversation_keys({"session_id": "s"}, {"prompt_cache_key": "pc"})
    for key in first:
        t.put(key, "acct-1", now=0)
    follow_up = conversation_keys({"session_id": "other"}, {"previous_response_id": "r", "prompt_cache_key": "pc"})
    assert [t.get(k, now=1) for k in follow_up] == [None, None, "acct-1"]
