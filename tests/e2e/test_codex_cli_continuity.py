"""The real Codex CLI → codexlb → sim for a long session (15 `exec` turns with a tool call each: 30 model
requests), over WebSocket and over HTTP, while the sim drops the backend's conversation state on half
of the anchored requests and, halfway, the conversation's account runs out of quota. codexlb keeps the
conversation going from its transcript: no turn fails and the CLI never has to resend the history."""

from __future__ import annotations

import pytest

from codexlb.upstream.state import UPSTREAM
from tests.e2e.test_codex_cli_sim import (
    TOOL_PROMPT,
    TOOL_REPLY,
    CodexHome,
    _check_turn,
    _show,
)
from tests.proxy.conftest import start_proxy

TURNS = 15


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_session_survives_lost_state_and_an_exhausted_account(codex_bin, tmp_path, aiohttp_server, settings,
                                                                    sim, http, transport):
    proxy = await start_proxy(aiohttp_server, settings, sim)
    async with http.post(f"{sim.url}/__sim/faults", json={"transport": "ws", "action": "drop_state",
                                                          "anchored": True, "share": 0.5, "times": None}) as resp:
        assert resp.status == 201
    codex = CodexHome(codex_bin, tmp_path, sim, websockets=transport == "ws", base_url=proxy.codex_base_url,
                      api_key="sk-x")
    session = None
    for turn in range(TURNS):
        if turn == TURNS // 2:
            home = sim.backend.records[-1].account_id
            async with http.post(f"{sim.url}/__sim/accounts/{home}/usage",
                                 json={"primary_used_percent": 100}) as resp:
                assert resp.status == 200
        args = ("exec", "--skip-git-repo-check", TOOL_PROMPT) if turn == 0 else (
            "exec", "--skip-git-repo-check", "resume", "--last", TOOL_PROMPT)
        got = _check_turn(await codex.run(*args), TOOL_REPLY)  # rc 0, no retry, no fallback, no error
        session = session or got
        assert got == session

    records = sim.backend.records_view()
    shown = _show(records)
    answered = [r for r in records if r["outcome"] == "completed" and r["generate"]]
    assert len(answered) == 2 * TURNS, shown
    assert any(r["error_code"] == "previous_response_not_found" for r in records), "no state was lost"
    assert any(r["error_code"] == "usage_limit_reached" for r in records), "the account never ran out"
    assert len({r["account_id"] for r in answered}) >= 2, shown
    # What upstream answered from, each time, was the true conversation so far and more.
    assert [r["continuity"] for r in answered] == ["new"] + ["extends"] * (2 * TURNS - 1), shown
    # Every lost state and the exhausted account were bridged by codexlb, from what it kept.
    recoveries = proxy.app[UPSTREAM].recoveries
    if transport == "ws":
        assert recoveries["ws:rebuild"] >= 1 and recoveries["ws:move"] >= 1, recoveries
        # The client's frames stayed deltas: 2 model requests a turn, each sent once (a whole-history
        # resend by the CLI would be one more answered request).
        assert len([r for r in records if r["outcome"] == "completed" and not r["generate"]]) == TURNS, shown
    else:
        assert recoveries["http:resend_whole"] >= 1, recoveries
