"""The real Codex CLI → codexlb → sim: a multi-turn `codex exec` session over HTTP, through the pool."""

from __future__ import annotations

from codexlb.pool.selection import make_strategy
from codexlb.services import GATES
from tests.e2e.test_codex_cli_sim import (RESUME_PROMPT, RESUME_REPLY, TOOL_PROMPT, TOOL_RAN, TOOL_REPLY, CodexHome,
                                          _check_turn, _show)
from tests.proxy.conftest import start_proxy


async def test_multi_turn_http_session_through_the_proxy(codex_bin, tmp_path, aiohttp_server, settings, sim):
    proxy = await start_proxy(aiohttp_server, settings, sim)
    codex = CodexHome(codex_bin, tmp_path, sim, websockets=False, base_url=proxy.codex_base_url,
                      api_key="sk-anything")
    first = await codex.run("exec", "--skip-git-repo-check", TOOL_PROMPT)
    session = _check_turn(first, TOOL_REPLY)
    assert TOOL_RAN.search(first.stderr), first.describe()
    second = await codex.run("exec", "--skip-git-repo-check", "resume", "--last", RESUME_PROMPT)
    assert _check_turn(second, RESUME_REPLY) == session

    records = sim.backend.records_view()
    shown = _show(records)
    assert len(records) == 3 and all(r["outcome"] == "completed" for r in records), shown
    # One conversation, one account: the session id keeps it where its prompt cache is.
    assert len({r["account_id"] for r in records}) == 1, shown
    assert records[1]["usage"]["input_tokens_details"]["cached_tokens"] > 0, shown
    # The client's API key never reached upstream; the account's token did.
    assert all(r.headers["authorization"] != "Bearer sk-anything" for r in sim.backend.records)


async def test_a_turn_survives_a_failing_account(codex_bin, tmp_path, aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim)
    async with http.post(f"{sim.url}/__sim/faults", json={"action": "status", "status": 500, "times": None,
                                                          "account": sim.backend.accounts[0].account_id}) as resp:
        assert resp.status == 201
    # Round robin starts at the lowest account id: the failing account is tried first.
    proxy.pool.strategy = make_strategy("round_robin")
    codex = CodexHome(codex_bin, tmp_path, sim, websockets=False, base_url=proxy.codex_base_url,
                      api_key="sk-anything")
    run = await codex.run("exec", "--skip-git-repo-check", "hello")
    assert run.rc == 0 and "Reconnecting" not in run.stderr, run.describe()
    failing = sim.backend.accounts[0].account_id
    assert [(r.account_id == failing, r.status) for r in sim.backend.records] == [(True, 500), (False, 200)]


async def test_websocket_session_through_the_proxy_stays_incremental(codex_bin, tmp_path, aiohttp_server,
                                                                     settings, sim):
    """The CLI's socket is bridged to an upstream socket: prewarm, then each request anchored on the
    previous response with only the new items, as against the backend itself."""
    proxy = await start_proxy(aiohttp_server, settings, sim)
    codex = CodexHome(codex_bin, tmp_path, sim, websockets=True, base_url=proxy.codex_base_url, api_key="sk-x")
    first = await codex.run("exec", "--skip-git-repo-check", TOOL_PROMPT)
    _check_turn(first, TOOL_REPLY)
    records = sim.backend.records_view()
    shown = _show(records)
    assert [(r["transport"], r["kind"], r["outcome"]) for r in records] == [
        ("ws", "prewarm", "completed"), ("ws", "turn", "completed"), ("ws", "turn", "completed")], shown
    prewarm, prompt, follow_up = records
    assert prompt["previous_response_id"] == prewarm["response_id"], shown
    assert follow_up["previous_response_id"] == prompt["response_id"] and follow_up["n_input"] == 1, shown
    assert len({r["account_id"] for r in records}) == 1, shown
    assert all(g["in_use"] == 0 and g["waiting"] == 0 for g in proxy.app[GATES].snapshot()["gates"].values())
