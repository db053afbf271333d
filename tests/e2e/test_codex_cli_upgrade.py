"""The real Codex CLI through a `codexlb serve` that is upgraded (handed over to a new process) every 5 s: one
long-lived CLI (`codex app-server`, as the TUI runs) holds a 30-turn session with a tool call in every turn, over
HTTP and over WebSocket, while streaming clients run. No refused connection, no failed request or turn, no CLI
retry, and at most one whole-input upstream send for the conversation per hand-over. Printed as a table."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from codexlb import server_record
from codexlb.sim.backend import SimConfig
from codexlb.sim.running import running_sim

from tests.e2e.app_server import AppServer
from tests.e2e.test_codex_cli_sim import TOOL_REPLY, CodexHome, _show
from tests.fleet.conftest import import_accounts
from tests.test_upgrade import Served, codexlb, streaming_clients

TURNS = 30
# The figure: with 50 every account's stream slots are full, and a conversation placed anew after a
# hand-over must still wait for its own account (the reasoning it sealed opens nowhere else).
CLIENTS = 50
EVERY_S = 5.0
RECORDS = 200_000  # the load's requests too: the sim must keep the conversation's first ones
# A tool that runs for a second, as real ones do: the session spans several hand-overs, some while the CLI's
# socket waits between a turn's two requests.
# An old process has nothing left to finish but the turn in flight (about a second here): its sockets go to the
# new process, so it exits well before `drain_timeout_s`.
DRAIN_BOUND_S = 15.0
TOOL_PROMPT = 'call:exec_command {"cmd":"sleep 1; echo hi"}'


async def upgrading(data_dirs: Iterator[Path], stop: asyncio.Event, figures: "Figures") -> None:
    """`codexlb upgrade` on the next of `data_dirs` every EVERY_S until `stop`: how long each took, and how long
    after it the old process took to exit, go in `figures`."""
    loop = asyncio.get_running_loop()
    exits = []
    for data_dir in data_dirs:
        try:
            await asyncio.wait_for(stop.wait(), EVERY_S)
            break
        except TimeoutError:
            pass
        old = server_record.holder(data_dir)
        started = loop.time()
        rc, _out, err = await codexlb("upgrade", "--data-dir", str(data_dir))
        assert rc == 0, err
        figures.upgrades.append(loop.time() - started)
        exits.append(asyncio.create_task(exit_delay(old.pid, figures.drained)))
    await asyncio.wait_for(asyncio.gather(*exits), DRAIN_BOUND_S)


async def exit_delay(pid: int, into: list[float]) -> None:
    """How long `pid` (not a child of ours) lives on from now."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        into.append(0.0)
        return
    exited = loop.create_future()
    loop.add_reader(fd, exited.set_result, None)  # a pidfd reads ready once the process has exited
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    into.append(loop.time() - started)


@dataclass
class Figures:
    """What a session through upgrades measured."""

    transport: str
    upgrades: list[float] = field(default_factory=list)  # how long each `codexlb upgrade` took
    drained: list[float] = field(default_factory=list)  # how long each old process lived on after it
    outcomes: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})  # the load's requests
    failures: list[str] = field(default_factory=list)
    cli_connects: int = 0
    cli_whole: int = 0
    cli_retries: list[str] = field(default_factory=list)


async def session_through_upgrades(codex: CodexHome, transport: str, url: str, data_dirs: Iterator[Path],
                                   headers: dict[str, str] | None = None) -> Figures:
    """TURNS turns of one long-lived CLI, CLIENTS streaming clients on `url`, and upgrades of `data_dirs` in turn,
    until the last turn; then until every old process has exited."""
    figures, stop = Figures(transport), asyncio.Event()
    load = upgrader = None
    try:
        async with AppServer(codex) as cli:
            load = asyncio.create_task(streaming_clients(url, stop, figures.outcomes, figures.failures,
                                                         clients=CLIENTS, headers=headers))
            upgrader = asyncio.create_task(upgrading(data_dirs, stop, figures))
            for turn in range(TURNS):
                answer = await cli.turn(TOOL_PROMPT)
                assert TOOL_REPLY.fullmatch(answer), f"turn {turn + 1}: {answer!r}\n{cli.log()}"
            stop.set()
            await asyncio.wait_for(asyncio.gather(load, upgrader), 240)
            figures.cli_connects, figures.cli_whole = cli.connects(), cli.whole_sends()
            figures.cli_retries = cli.retries()
    finally:
        stop.set()
        for task in (load, upgrader):
            if task is not None and not task.done():
                task.cancel()
    return figures


def check(figures: Figures, sim) -> None:
    """Print the session's table; hold it to the issue's bounds."""
    records = sim.backend.records_view()
    # The conversation's requests: over the upstream WebSocket (the load, with no session to bridge, goes the plain
    # HTTP way), and any the plain HTTP way, whole as the CLI sent them (the load sends one item).
    mine = [r for r in records if r["transport"] == "ws" or r["n_input"] > 1]
    shown = _show(mine)
    answered = [r for r in mine if r["outcome"] == "completed" and r["generate"]]
    whole = [r for r in mine if r["generate"] and r["previous_response_id"] is None]
    plain = [r for r in mine if r["transport"] != "ws"]
    f = figures
    print(f"\n| transport | turns | upgrades | load served | load failed | CLI sockets | CLI whole sends | "
          f"CLI retries | whole-input upstream sends | plain HTTP |\n|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {f.transport} | {TURNS} | {len(f.upgrades)} | {f.outcomes['ok']} | {f.outcomes['failed']} | "
          f"{f.cli_connects} | {f.cli_whole} | {len(f.cli_retries)} | {len(whole) - len(plain)} | {len(plain)} |\n"
          f"upgrade took {min(f.upgrades):.2f}-{max(f.upgrades):.2f} s, "
          f"the old process exited {min(f.drained):.2f}-{max(f.drained):.2f} s after")
    assert f.failures == []
    assert len(f.upgrades) >= 2
    assert f.cli_retries == []
    assert len(answered) >= 2 * TURNS, shown  # a tool call and the answer after it, per turn
    assert all(r["continuity"] != "diverged" for r in answered), shown
    assert len({r["account_id"] for r in answered}) == 1, shown
    # Whole-input sends over the upstream WebSocket: the conversation's first, and at most one per hand-over.
    assert len(whole) - len(plain) <= 1 + len(f.upgrades), shown
    assert max(f.drained) <= DRAIN_BOUND_S
    if f.transport == "ws":
        # One socket for the whole session, and the whole history sent once (the startup prewarm): each hand-over
        # passed the CLI's socket on to the new process, none closed it.
        assert (f.cli_connects, f.cli_whole) == (1, 1), shown


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_a_session_through_upgrades_every_five_seconds(codex_bin, settings, tmp_path, transport):
    async with running_sim(SimConfig(accounts=3, records=RECORDS)) as sim:
        data_dir = tmp_path / "data"
        await import_accounts(dataclasses.replace(settings, data_dir=data_dir), sim)
        served = Served(data_dir, sim)
        url = await served.start()
        (tmp_path / "cli").mkdir()
        codex = CodexHome(codex_bin, tmp_path / "cli", sim, websockets=transport == "ws",
                          base_url=f"{url}/backend-api/codex", api_key="sk-unused")
        try:
            figures = await session_through_upgrades(codex, transport, url, itertools.repeat(data_dir))
        finally:
            await served.stop()
        check(figures, sim)
