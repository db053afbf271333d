"""The recovery decision table, every row and every bound."""

from __future__ import annotations

import itertools

import pytest

from codexlb.recovery import MAX_RESENDS, RESEND_BUDGET_S, Action, LostAnchors, Phase, on_refusal, on_socket_lost


@pytest.mark.parametrize("resends, elapsed", list(itertools.product([0, 1, MAX_RESENDS, 99], [0.0, RESEND_BUDGET_S, 1e6])))
def test_lost_between_requests_always_reconnects_quietly(resends, elapsed):
    assert on_socket_lost(Phase.IDLE, resends, elapsed).action is Action.RECONNECT


@pytest.mark.parametrize("resends, elapsed", list(itertools.product([0, 1, MAX_RESENDS, 99], [0.0, RESEND_BUDGET_S, 1e6])))
def test_lost_after_the_client_saw_bytes_fails_retriably(resends, elapsed):
    decision = on_socket_lost(Phase.AFTER_BYTES, resends, elapsed)
    assert (decision.action, decision.code) == (Action.FAIL, "stream_incomplete")


@pytest.mark.parametrize("resends", range(MAX_RESENDS))
def test_lost_before_any_byte_is_resent_within_the_bounds(resends):
    assert on_socket_lost(Phase.BEFORE_BYTES, resends, RESEND_BUDGET_S - 0.001).action is Action.RESEND


@pytest.mark.parametrize("resends, elapsed", [(MAX_RESENDS, 0.0), (0, RESEND_BUDGET_S), (MAX_RESENDS + 5, 1e6)])
def test_lost_before_any_byte_past_a_bound_fails_as_unavailable(resends, elapsed):
    decision = on_socket_lost(Phase.BEFORE_BYTES, resends, elapsed)
    assert (decision.action, decision.code) == (Action.FAIL, "upstream_unavailable")
    assert decision.reason == "fail:upstream_unavailable"


def test_bounds_are_the_callers_to_tighten():
    assert on_socket_lost(Phase.BEFORE_BYTES, 1, 0.0, max_resends=1).action is Action.FAIL
    assert on_socket_lost(Phase.BEFORE_BYTES, 0, 2.0, budget_s=1.0).action is Action.FAIL


def refusal(**given):
    facts = {"lost_state": False, "account_failed": False, "anchored": True, "history_known": True,
             "rebuilt": False, "accounts_left": True, **given}
    return on_refusal(**facts).action


def test_lost_state_with_a_known_history_is_rebuilt_once():
    assert refusal(lost_state=True) is Action.REBUILD
    assert refusal(lost_state=True, rebuilt=True) is Action.PASS  # never a loop
    assert refusal(lost_state=True, history_known=False) is Action.PASS
    assert refusal(lost_state=True, anchored=False) is Action.PASS  # not ours to explain


@pytest.mark.parametrize("anchored, known, left, expected", [
    (False, False, True, Action.MOVE),   # no anchor: any account serves it as it is
    (True, True, True, Action.MOVE),     # anchored: moves with its whole history
    (True, False, True, Action.PASS),    # anchored, history unknown: only its account could serve it
    (False, True, False, Action.PASS),   # no account left to try
])
def test_a_failed_account_moves_the_request_when_it_can(anchored, known, left, expected):
    assert refusal(account_failed=True, anchored=anchored, history_known=known, accounts_left=left) is expected


def test_anything_else_is_passed_on():
    assert refusal() is Action.PASS


def test_a_lost_anchor_gets_retriable_answers_then_the_400_exactly_once():
    lost = LostAnchors(retries=2)
    answers = [lost.answer("resp_1").action for _ in range(7)]
    # 502, 502, then the 400 once; then the count starts over for a client that keeps trying.
    assert answers == [Action.FAIL, Action.FAIL, Action.PASS, Action.FAIL, Action.FAIL, Action.PASS, Action.FAIL]
    assert lost.answer("resp_2").code == "upstream_unavailable"


def test_lost_anchors_are_bounded():
    lost = LostAnchors(retries=1, max_anchors=2)
    for anchor in ("a", "b", "c"):
        lost.answer(anchor)
    # "a" was forgotten: it starts over with a retriable answer instead of the 400.
    assert lost.answer("a").action is Action.FAIL and lost.answer("c").action is Action.PASS
