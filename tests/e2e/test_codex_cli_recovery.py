"""The real Codex CLI → codexlb → sim for a long session (10 `exec` turns with a tool call each: 20 model
requests, 30 with the WebSocket prewarms), over WebSocket and over HTTP, while the sim drops the
upstream socket between requests and before `response.created`. The seed's failure was the client
falling back to resending the whole conversation; here no turn fails and it never has to."""

from __future__ import annotations

import pytest

from tests.e2e.test_codex_cli_sim import TOOL_PROMPT, TOOL_REPLY, CodexHome, _check_turn, _show
from tests.proxy.conftest import start_proxy

TURNS = 10
FAULTS = (
    {"action": "close_after_response", "share": 0.3},               # lost between requests
    {"action": "close", "after_events": 0, "anchored": True, "share": 0.3},  # lost before response.created
)


@pytest.mark.parametrize("faults", [False, True], ids=["faults-off", "faults-on"])
@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_long_session_stays_incremental(codex_bin, tmp_path, aiohttp_server, settings, sim, http, transport,
                                              faults):
    proxy = await start_proxy(aiohttp_server, settings, sim)
    for fault in FAULTS if faults else ():
        async with http.post(f"{sim.url}/__sim/faults", json={"transport": "ws", "times": None, **fault}) as resp:
            assert resp.status == 201
    codex = CodexHome(codex_bin, tmp_path, sim, websockets=transport == "ws", base_url=proxy.codex_base_url,
                      api_key="sk-x")
    session = None
    for turn in range(TURNS):
        args = ("exec", "--skip-git-repo-check", TOOL_PROMPT) if turn == 0 else (
            "exec", "--skip-git-repo-check", "resume", "--last", TOOL_PROMPT)
        run = await codex.run(*args)
        # rc 0, the reply, and no "Reconnecting", fallback or error on the way; one session throughout.
        got = _check_turn(run, TOOL_REPLY)
        session = session or got
        assert got == session

    records = sim.backend.records_view()
    shown = _show(records)
    answered = [r for r in records if r["outcome"] == "completed"]
    assert {r["transport"] for r in records} == {"ws"}, shown  # the HTTP client rode the bridge
    model_requests = [r for r in answered if r["kind"] != "prewarm"]
    assert len(model_requests) == 2 * TURNS, shown
    if faults:
        assert any(r["outcome"] == "close" for r in records), "no fault fired: the test proved nothing"
    if transport == "ws":
        # The client's own frames reach the sim as they are: every model request is anchored, none is a
        # whole-history resend (the CLI makes one after any failure of an anchored request).
        assert all(r["previous_response_id"] for r in model_requests), shown
        assert len([r for r in answered if r["kind"] == "prewarm"]) == TURNS, shown
    else:
        # The CLI sent the whole conversation each time; upstream got it once, then only new items.
        first, *rest = model_requests
        assert first["previous_response_id"] is None
        assert all(r["previous_response_id"] for r in rest), shown
        assert max(r["input_bytes"] for r in rest) < first["input_bytes"] / 10, shown
