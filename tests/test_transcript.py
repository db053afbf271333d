"""The transcript: whole histories from anchor chains, within its two budgets."""

from __future__ import annotations

import tracemalloc

import orjson

from codexlb.transcript import BOOKKEEPING, Transcripts, without_account_items


def msg(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def size(*items: dict) -> int:
    """What one response with these items counts against the budgets."""
    return BOOKKEEPING + sum(len(orjson.dumps(i)) for i in items)


def test_history_follows_the_anchors_back():
    t = Transcripts(10**6, 10**6)
    t.record("c", "r1", None, [msg("base")], [])
    t.record("c", "r2", "r1", [msg("one")], [msg("answer one")])
    t.record("c", "r3", "r2", [msg("two")], [msg("answer two")])
    assert t.history("r3") == [msg("base"), msg("one"), msg("answer one"), msg("two"), msg("answer two")]
    assert t.history("r1") == [msg("base")]
    assert t.stats()["hits"] == 2


def test_a_missing_link_is_a_miss_not_a_guess():
    t = Transcripts(10**6, 10**6)
    t.record("c", "r2", "r1", [msg("one")], [])
    assert t.history("r2") is None and t.history("nope") is None
    assert t.stats()["misses"] == 2


def test_a_conversation_over_its_budget_loses_its_oldest_responses():
    one = size(msg("x" * 100))
    t = Transcripts(10**6, 3 * one)
    for n in range(5):
        t.record("c", f"r{n}", f"r{n - 1}" if n else None, [msg("x" * 100)], [])
    assert len(t) == 3 and t.bytes == 3 * one
    assert t.history("r4") is None  # r0 and r1 went, so the chain is broken
    assert t.stats()["evictions"] == 2


def test_the_total_budget_evicts_the_least_recently_used_conversation_first():
    one = size(msg("x" * 100))
    t = Transcripts(2 * one, 10**6)
    t.record("a", "a1", None, [msg("x" * 100)], [])
    t.record("b", "b1", None, [msg("x" * 100)], [])
    assert t.history("a1") is not None  # a is now the more recently used
    t.record("c", "c1", None, [msg("x" * 100)], [])
    assert t.history("b1") is None and t.history("a1") is not None and t.history("c1") is not None
    assert t.stats()["conversations"] == 2


def test_a_response_larger_than_a_budget_is_not_kept_and_evicts_nothing():
    t = Transcripts(10**6, BOOKKEEPING + 500)
    t.record("c", "small", None, [msg("hi")], [])
    t.record("c", "huge", "small", [msg("x" * 1000)], [])
    assert t.history("small") == [msg("hi")] and t.history("huge") is None and len(t) == 1


def test_recording_a_response_again_replaces_it():
    t = Transcripts(10**6, 10**6)
    t.record("c", "r1", None, [msg("a")], [])
    t.record("c", "r1", None, [msg("b")], [])
    assert t.history("r1") == [msg("b")] and t.bytes == size(msg("b"))


def test_items_only_one_account_can_read_stay_behind():
    reasoning = {"type": "reasoning", "encrypted_content": "sealed", "summary": []}
    plain_reasoning = {"type": "reasoning", "summary": []}
    assert without_account_items([msg("a"), reasoning, plain_reasoning]) == [msg("a"), plain_reasoning]


def test_the_budget_is_the_memory_held():
    """Filled to its budget with responses like the Codex CLI's (a user message in; a sealed reasoning item
    and a 40-word answer out), the transcript holds about its budget in memory: items kept as Python
    objects took 3.7 times the budget."""
    budget = 4 * 1024 * 1024
    t = Transcripts(budget, budget)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        n = 0
        while t.stats()["evictions"] < 100:
            reasoning = {"id": f"rs_{n:024x}", "type": "reasoning", "summary": [], "encrypted_content": "e" * 64}
            answer = {"id": f"msg_{n:024x}", "type": "message", "role": "assistant", "status": "completed",
                      "content": [{"type": "output_text", "annotations": [], "text": " ".join(["word"] * 40)}]}
            t.record(f"c{n // 8}", f"resp_{n:024x}", f"resp_{n - 1:024x}" if n % 8 else None, [msg(f"turn {n}")],
                     [reasoning, answer])
            n += 1
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert t.bytes <= budget
    assert held < 1.2 * budget, f"{held / budget:.2f} times the budget"
