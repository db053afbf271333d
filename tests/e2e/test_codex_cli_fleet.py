"""The fleet end to end: three real `codexlb serve` replicas on one PostgreSQL database behind a real HAProxy, and
the real Codex CLI for a 20-turn session with a tool call in every turn, over HTTP and over WebSocket, with HAProxy
hashing on the CLI's session header and in plain round robin (the worst case: every request may land elsewhere).
Then the same while the replica serving the conversation is SIGKILLed in the middle of turn 10's answer and
started again before turn 15.

What it holds the fleet to: no failed turn; no CLI retry or whole-history resend, but the one reconnect a killed
replica costs; at most one whole-input upstream send per change of replica; one account for the conversation."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
from pathlib import Path

import pytest

from tests.e2e.test_codex_cli_sim import (
    SESSION_ID,
    TOOL_PROMPT,
    TOOL_REPLY,
    CodexHome,
    Run,
    _check_turn,
    _show,
)
from tests.fleet.conftest import SECRET_KEY, import_accounts
from tests.fleet.replicas import Replica
from tests.haproxy import MODES, SERVED_BY, SESSION_HEADER, running_haproxy
from tests.serving import child_env

pytestmark = pytest.mark.one_pass

TURNS, KILL_AT, RESTART_AT = 20, 10, 15
REPLICAS = 3
RESPONSES = "/backend-api/codex/responses"


async def create_key(tmp_path: Path, database_url: str) -> str:
    """An API key for the CLI, made as an operator would: `codexlb keys create` on the fleet's database."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codexlb", "keys", "create", "--name", "fleet-e2e", "--json",
        "--data-dir", str(tmp_path / "operator"),
        env=child_env(CODEXLB_DATABASE_URL=database_url, CODEXLB_SECRET_KEY=SECRET_KEY),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)["key"]


async def served_by(http, front, name: str, headers: dict[str, str]) -> None:
    """Until the front door sends a request with `headers` to replica `name` (its health checks saw it back)."""
    async with asyncio.timeout(20):
        while True:
            async with http.get(f"{front.url}/health/ready", headers=headers) as resp:
                if resp.status == 200 and resp.headers.get(SERVED_BY) == name:
                    return
            await asyncio.sleep(0.1)  # HAProxy checks every 500 ms: nothing to wait on but its next check


async def stalled(sim, fault_id: str) -> None:
    """Until the sim holds a response open under the stall fault `fault_id`."""
    async with asyncio.timeout(60):
        while not any(fault_id in r.faults for r in sim.backend.records):
            await asyncio.sleep(0.02)


async def serving_now(http, replicas: list[Replica]) -> Replica:
    """The one replica with something in flight (the stalled answer)."""
    busy = [r for r in replicas if await r.in_use(http) > 0]
    assert len(busy) == 1, [r.port for r in busy]
    return busy[0]


def check_killed_turn(run: Run) -> str:
    """The turn whose replica died under it: done, with at most the one reconnect that cost."""
    assert run.rc == 0 and TOOL_REPLY.fullmatch(run.stdout.strip()), run.describe()
    lines = run.stderr.splitlines()
    # The CLI prints its retry as "ERROR: Reconnecting... 1/5".
    assert sum("Reconnecting" in line for line in lines) <= 1, run.describe()
    assert not [line for line in lines if "ERROR: " in line and "Reconnecting" not in line], run.describe()
    assert "Falling back" not in run.stderr, run.describe()
    [session] = SESSION_ID.findall(run.stderr)
    return session


def replica_changes(served: list[tuple[str, int, str, str]], method: str) -> tuple[list[str], int]:
    """The replicas the conversation's requests went to, in order, and how often that changed."""
    hops = [backend for backend, _status, verb, path in served if verb == method and path.startswith(RESPONSES)]
    return hops, sum(a != b for a, b in zip(hops, hops[1:]))


@pytest.mark.parametrize("killed", [False, True], ids=["steady", "replica-killed"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_a_long_session_through_the_fleet(codex_bin, pg_database, settings, sim, http, tmp_path, transport,
                                               mode, killed):
    await import_accounts(dataclasses.replace(settings, database_url=pg_database, secret_key=SECRET_KEY), sim)
    key = await create_key(tmp_path, pg_database)
    replicas = [Replica(tmp_path / f"r{n}", pg_database, sim) for n in range(REPLICAS)]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        async with running_haproxy([("127.0.0.1", r.port) for r in replicas], mode=mode) as front:
            (tmp_path / "cli").mkdir()
            codex = CodexHome(codex_bin, tmp_path / "cli", sim, websockets=transport == "ws",
                              base_url=f"{front.url}/backend-api/codex", api_key=key)
            session = victim = None
            for turn in range(TURNS):
                args = ("exec", "--skip-git-repo-check", TOOL_PROMPT) if turn == 0 else (
                    "exec", "--skip-git-repo-check", "resume", "--last", TOOL_PROMPT)
                if killed and turn == KILL_AT:
                    victim, run = await run_while_killing(codex, args, sim, http, replicas)
                    got = check_killed_turn(run)
                else:
                    if killed and turn == RESTART_AT:
                        await victim.start()
                        name = f"s{replicas.index(victim)}"
                        await served_by(http, front, name, {SESSION_HEADER: session} if mode == "hash" else {})
                    got = _check_turn(await codex.run(*args), TOOL_REPLY)
                session = session or got
                assert got == session
            served = front.served()
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))

    records = sim.backend.records_view()
    shown = _show(records)
    answered = [r for r in records if r["outcome"] == "completed" and r["generate"]]
    # Two model requests a turn (the prompt, then the tool's output), each answered once.
    assert len(answered) == 2 * TURNS, shown
    assert len({r["account_id"] for r in records}) == 1, shown  # one account: it never ran out of quota
    assert all(r["continuity"] != "diverged" for r in answered), shown
    # Nothing failed upstream, but the answer held open while its replica was killed.
    assert [r["outcome"] for r in records if r["outcome"] != "completed"] == (["stall"] if killed else []), shown
    whole = [r for r in records if r["generate"] and r["previous_response_id"] is None]
    if transport == "http":
        hops, changes = replica_changes(served, "POST")
        assert len(hops) >= 2 * TURNS, served
        # The CLI sends the whole conversation each time; upstream gets it whole only from a replica that just
        # took the conversation over (or made its socket again after a kill).
        assert len(whole) <= 1 + changes, (changes, shown)
        if mode == "hash" and not killed:
            assert changes == 0 and len(whole) == 1, (hops, shown)
    else:
        hops, changes = replica_changes(served, "GET")
        # The CLI's own frames: anchored on what it received on its socket, never the whole history again but
        # for the one reconnect a killed replica costs.
        assert len(whole) == (1 if killed else 0), shown
    print(f"\n{transport} {mode} {'replica killed' if killed else 'steady'}: {len(answered)} answered, "
          f"{changes} changes of replica over {len(hops)} requests, {len(whole)} whole-input upstream sends")


async def run_while_killing(codex: CodexHome, args: tuple[str, ...], sim, http, replicas: list[Replica]):
    """Run a turn, SIGKILL the replica serving it once its answer is under way; (the replica killed, the run)."""
    async with http.post(f"{sim.url}/__sim/faults", json={"action": "stall", "after_events": 2, "kind": "turn",
                                                          "times": 1}) as resp:
        assert resp.status == 201
        fault_id = (await resp.json())["id"]
    running = asyncio.create_task(codex.run(*args))
    try:
        await stalled(sim, fault_id)
        victim = await serving_now(http, replicas)
        await victim.stop(signal.SIGKILL)
        return victim, await running
    finally:
        if not running.done():
            running.cancel()
