"""The issue's acceptance for the per-conversation record: one long-lived Codex CLI (`codex app-server`) holds a
15-turn session (a tool call in every turn: two model requests a turn) through codexlb to the sim, over HTTP
(the bridge) and over WebSocket, while upstream goes wrong between turns: it forgets the conversation (a lost
anchor: the input goes up whole), drops the socket before answering, and after an answer. Then
`codexlb usage --conversation ID --json` and `GET /api/conversations/ID` must show what the sim recorded: the
turns, each request's tokens, what went upstream for it, and what each recovery cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from codexlb.services import KEYS, STORE
from tests.e2e.app_server import AppServer
from tests.e2e.test_codex_cli_sim import TOOL_PROMPT, TOOL_REPLY, CodexHome, _show
from tests.proxy.conftest import start_proxy
from tests.serving import codexlb
from tests.simclient import add_fault
from tests.simledger import SimRequest, sim_requests

TURNS = 15
# What goes wrong upstream just before a turn (by its index): the faults the sim plays on that turn's requests.
DROP = "drop"
BEFORE_TURN: dict[int, Any] = {
    3: DROP,  # the backend forgets the conversation: the anchored request is refused, the input goes up whole
    6: {"transport": "ws", "action": "close", "after_events": 0, "anchored": True, "times": 1},  # lost mid-request
    9: {"transport": "ws", "action": "close_after_response", "times": 1},  # lost between two requests
    12: DROP,
}
# Every figure of a request, as the ledger's rows and summaries name them.
TOKENS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
SUMMED = (*TOKENS, "client_bytes", "upstream_bytes", "unanchored_bytes", "saved_bytes", "recoveries",
          "recovery_bytes")


async def _break(http, sim, what: Any) -> None:
    if what == DROP:
        async with http.post(f"{sim.url}/__sim/state/drop", json={}) as resp:
            assert resp.status == 200 and (await resp.json())["dropped"] >= 1
    else:
        await add_fault(http, sim, **what)


def _expected(sim_seen: SimRequest) -> dict[str, Any]:
    """A request's figures as the sim recorded them."""
    return {
        **{name: getattr(sim_seen, name) for name in TOKENS},
        "upstream_items": sim_seen.upstream_items,
        "upstream_bytes": sim_seen.upstream_bytes,
        "recoveries": sim_seen.recoveries,
        "recovery_bytes": sim_seen.recovery_bytes,
    }


def _check(shown: dict[str, Any], seen: list[SimRequest], where: str, records: str) -> None:
    """The ledger's view of the conversation (the API's or the CLI's) against what the sim recorded."""
    summary, rows = shown["conversation"], shown["requests"]
    got = [{name: row[name] for name in _expected(seen[0])} for row in rows]
    assert got == [_expected(s) for s in seen], f"{where}: per request, ledger vs sim\n{records}"
    assert summary["turns"] == TURNS, where
    assert len({row["turn_id"] for row in rows if row["turn_id"]}) == TURNS, where
    assert summary["requests"] == len(rows), where
    for name in SUMMED:
        assert summary[name] == sum(row[name] or 0 for row in rows), f"{where}: {name}"
    for row, s in zip(rows, seen):
        # Saved: a whole resend, less what went upstream (the sim's bytes, recoveries included).
        assert row["saved_bytes"] == max(0, row["unanchored_bytes"] - s.upstream_bytes), (where, row)
        if s.lost_anchor:
            assert row["saved_bytes"] == 0, (where, row)  # the history went up again
        if row["transport"] == "ws":  # the client's frames went up as they came, until a recovery
            assert row["client_bytes"] == s.attempts[0]["body_bytes"], (where, row)
        if s.lost_anchor:
            assert row["recovery_kinds"] in ("rebuild", "whole_send"), (where, row)
            # The sim saw the whole input go up: what a client resending its history would have sent. The
            # ledger's estimate is that, but for the anchor's few bytes the client's request carried.
            whole = s.answered["body_bytes"]
            assert abs(row["unanchored_bytes"] - whole) <= whole / 100, (where, row, whole)
        elif s.reconnected or len(s.attempts) > 1:
            assert row["recovery_kinds"] == "reconnect", (where, row)


async def run_session(codex_bin, root: Path, proxy, http, transport: str) -> tuple[str, list[SimRequest], str]:
    """The session, over `transport`, with a key named e2e: its conversation id, the sim's figures for each of its
    requests, and the sim's records as text (for failures)."""
    sim = proxy.sim
    secret, _key = await proxy.app[KEYS].create("e2e")
    (root / "cli").mkdir()
    codex = CodexHome(codex_bin, root / "cli", sim, websockets=transport == "ws", base_url=proxy.codex_base_url,
                      api_key=secret)
    async with AppServer(codex) as cli:
        for turn in range(TURNS):
            if turn in BEFORE_TURN:
                await _break(http, sim, BEFORE_TURN[turn])
            answer = await cli.turn(TOOL_PROMPT)
            assert TOOL_REPLY.fullmatch(answer), f"turn {turn + 1}: {answer!r}\n{cli.log()}"
        conversation, retries = cli.thread_id, cli.retries()
    assert retries == [], cli.log()  # codexlb recovered every fault: the CLI never saw one

    records = sim.backend.records_view()
    async with http.get(f"{sim.url}/__sim/faults") as resp:
        faults = (await resp.json())["faults"]
    seen = sim_requests(records, faults)
    shown = _show(records)
    # Every fault fired, and each made a recovery the sim can see.
    assert all(f["fired"] for f in faults), faults
    assert sum(s.lost_anchor for s in seen) == 2, shown
    assert sum(s.reconnected for s in seen) == 1, shown
    assert sum(len(s.attempts) - 1 for s in seen) == 3, shown  # two lost anchors, one socket lost mid-request
    assert len([s for s in seen if s.answered["generate"]]) == 2 * TURNS, shown
    await proxy.app[STORE].flush_usage()
    return conversation, seen, shown


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_a_session_with_faults_is_recorded_as_the_sim_saw_it(codex_bin, tmp_path, aiohttp_server, settings,
                                                                   sim, http, transport):
    proxy = await start_proxy(aiohttp_server, settings, sim)
    conversation, seen, shown = await run_session(codex_bin, tmp_path, proxy, http, transport)
    async with http.get(f"{proxy.url}/api/conversations/{conversation}") as resp:
        assert resp.status == 200, await resp.text()
        api = await resp.json()
    _check(api, seen, "GET /api/conversations/ID", shown)
    assert api["conversation"]["api_key_name"] == "e2e"
    assert api["conversation"]["recoveries"] == 4

    rc, out, err = await codexlb("usage", "--conversation", conversation, "--json",
                                 "--data-dir", str(settings.data_dir))
    assert rc == 0, err
    _check(orjson.loads(out), seen, "codexlb usage --conversation ID --json", shown)
