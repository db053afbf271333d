"""`codexlb upgrade` (SIGUSR2): a real `serve` process hands its socket and data dir over to a new process while
streaming clients keep it busy: no connection refused, no request failed; a new process that cannot start
leaves the old one serving, and the command says why. Client connections go on in the new process: an idle
WebSocket (still anchored), an idle keep-alive connection, one busy at the hand-over once its response is out; and
a new process that takes them no more leaves no client hanging."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson

from codexlb import server_record
from codexlb.server import conn_handover
from tests import simclient
from tests.fleet.conftest import import_accounts
from tests.serving import child_env
from tests.simclient import body, parse_sse, user, ws_turn

CLIENTS = 20
UPGRADES = 4


async def codexlb(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "codexlb", *args, env=child_env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, out.decode(), err.decode()


class Served:
    """A `codexlb serve` process (and whatever it hands over to: they share its stderr pipe)."""

    def __init__(self, data_dir: Path, sim) -> None:
        self.data_dir, self.sim = data_dir, sim
        self.lines: list[dict] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def start(self, *args: str) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(self.data_dir),
            "--log-format", "json", "--upstream-base-url", self.sim.upstream_base_url,
            "--auth-base-url", self.sim.url, *args, env=child_env(), stderr=asyncio.subprocess.PIPE)
        first = json.loads(await asyncio.wait_for(self.proc.stderr.readline(), 60))
        assert first["event"] == "listening", first
        self._reader = asyncio.create_task(self._read())
        return first["url"]

    async def _read(self) -> None:
        async for raw in self.proc.stderr:
            if raw.startswith(b"{"):
                self.lines.append(json.loads(raw))

    def holder(self) -> server_record.Holder:
        found = server_record.holder(self.data_dir)
        assert found is not None
        return found

    async def stop(self) -> None:
        """SIGTERM to whichever process serves now; then until every one of them has closed the log pipe."""
        holder = server_record.holder(self.data_dir)
        if holder is not None and holder.pid:
            os.kill(holder.pid, signal.SIGTERM)
        if self.proc.returncode is None and (holder is None or holder.pid != self.proc.pid):
            await asyncio.wait_for(self.proc.wait(), 60)
        await asyncio.wait_for(self._reader, 60)


async def streaming_clients(url: str, stop: asyncio.Event, outcomes: dict[str, int], failures: list[str],
                            clients: int = CLIENTS, headers: dict[str, str] | None = None) -> None:
    async def client(n: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=headers) as http:
            while not stop.is_set():
                try:
                    async with http.post(f"{url}/backend-api/codex/responses",
                                         json=body(user(f"client {n}"), stream=True)) as resp:
                        raw = await resp.read()
                    done = resp.status == 200 and parse_sse(raw)[-1]["type"] == "response.completed"
                    outcomes["ok" if done else "failed"] += 1
                    if not done:
                        failures.append(f"{resp.status} {raw[:200]!r}")
                except aiohttp.ClientError as exc:
                    outcomes["failed"] += 1
                    failures.append(repr(exc))

    await asyncio.gather(*(client(n) for n in range(clients)))


async def test_upgrades_under_load_refuse_and_fail_nothing(settings, sim, tmp_path):
    data_dir = tmp_path / "data"
    await import_accounts(dataclasses.replace(settings, data_dir=data_dir), sim)
    served = Served(data_dir, sim)
    url = await served.start()
    stop, outcomes, failures = asyncio.Event(), {"ok": 0, "failed": 0}, []
    clients = asyncio.create_task(streaming_clients(url, stop, outcomes, failures))
    pids = [served.holder().pid]
    try:
        for _ in range(UPGRADES):
            before = outcomes["ok"]
            while outcomes["ok"] < before + CLIENTS:  # load on the process about to hand over
                await asyncio.sleep(0.01)
            rc, out, err = await codexlb("upgrade", "--data-dir", str(data_dir))
            assert rc == 0, err
            pids.append(served.holder().pid)
            assert f"handed over to pid {pids[-1]}" in out
        after = outcomes["ok"]
        while outcomes["ok"] < after + CLIENTS:  # the last one serves too
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(clients, 60)
        await served.stop()
    print(f"\n{UPGRADES} upgrades under {CLIENTS} streaming clients: {outcomes['ok']} requests served, "
          f"{outcomes['failed']} failed; pids {pids}")
    assert failures == []
    assert len(set(pids)) == UPGRADES + 1
    assert server_record.holder(data_dir) is None  # the last one let the data dir go at its stop
    # Each old process drained and stopped on its own; none logged an error.
    assert [line for line in served.lines if line["level"] in ("error", "critical")] == []
    assert sum(line["event"] == "upgrade: new process ready; this one drains" for line in served.lines) == UPGRADES


async def test_a_new_process_that_cannot_start_leaves_the_old_one_serving(settings, sim, tmp_path, http):
    data_dir = tmp_path / "data"
    served = Served(data_dir, sim)
    url = await served.start()
    try:
        old = served.holder().pid
        # A setting the new process cannot start with (the command itself reads it fine).
        (data_dir / "config.toml").write_text(f'secret_key_file = "{tmp_path / "missing.key"}"\n')
        rc, _out, err = await codexlb("upgrade", "--data-dir", str(data_dir))
        assert rc == 1, err
        assert f"upgrade failed; pid {old} goes on serving:" in err and "missing.key" in err, err
        assert served.holder().pid == old
        async with http.get(f"{url}/health/ready") as resp:
            assert resp.status == 200
        # Mended, the next upgrade goes through.
        (data_dir / "config.toml").unlink()
        rc, out, err = await codexlb("upgrade", "--data-dir", str(data_dir))
        assert rc == 0, err
        assert served.holder().pid != old
    finally:
        await served.stop()
    errors = [line for line in served.lines if line["level"] == "error"]
    assert [line["event"] for line in errors] == ["upgrade failed; this process goes on serving"], errors


async def test_upgrade_says_when_no_server_runs(tmp_path):
    rc, _out, err = await codexlb("upgrade", "--data-dir", str(tmp_path / "nothing"))
    assert rc == 1 and "no codexlb server runs on data dir" in err, err


WS_HEADERS = {"session_id": "conv-upgrade", "openai-beta": "responses_websockets=2026-02-06"}


async def serving(settings, sim, tmp_path, *args: str) -> tuple[Served, str]:
    data_dir = tmp_path / "data"
    await import_accounts(dataclasses.replace(settings, data_dir=data_dir), sim)
    served = Served(data_dir, sim)
    return served, await served.start(*args)


async def upgrade(served: Served) -> int:
    """`codexlb upgrade`, then until the process the test started has exited: the new one's pid."""
    rc, out, err = await codexlb("upgrade", "--data-dir", str(served.data_dir))
    assert rc == 0, err
    await exited(served.proc, 20)  # its connections went on elsewhere; nothing held it
    return served.holder().pid


async def exited(proc: asyncio.subprocess.Process, within_s: float) -> None:
    # Not proc.wait(): on Python 3.11 that also waits for its stderr, which the new process holds too.
    async with asyncio.timeout(within_s):
        while proc.returncode is None:
            await asyncio.sleep(0.05)


def ws_records(sim) -> list[dict]:
    return [r for r in sim.backend.records_view() if r["transport"] == "ws"]


async def test_an_idle_websocket_goes_on_in_the_new_process_anchored(settings, sim, tmp_path, http):
    served, url = await serving(settings, sim, tmp_path)
    try:
        async with http.ws_connect(f"{url}/backend-api/codex/responses", headers=WS_HEADERS) as ws:
            before = await ws_turn(ws, body(user("before the upgrade")))
            anchor = before[-1]["response"]["id"]
            await upgrade(served)
            after = await ws_turn(ws, body(user("after it"), previous_response_id=anchor))
            assert after[-1]["type"] == "response.completed", after
            assert not ws.closed  # the same connection: no close frame, no reconnect
    finally:
        await served.stop()
    first, second = ws_records(sim)
    # Upstream got the new item alone, anchored, on the account and turn state that hold the conversation.
    assert (second["previous_response_id"], second["n_input"]) == (anchor, 1)
    assert (second["account_id"], second["turn_state"]) == (first["account_id"], first["turn_state"])
    assert [line for line in served.lines if line["level"] in ("warning", "error")] == []


async def keep_alive_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> tuple[bytes, dict]:
    writer.write(f"GET /health/live HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head, orjson.loads(await reader.readexactly(length))


async def test_an_idle_keep_alive_connection_goes_on_in_the_new_process(settings, sim, tmp_path):
    served, url = await serving(settings, sim, tmp_path)
    host = url.removeprefix("http://")
    reader, writer = await asyncio.open_connection(*host.rsplit(":", 1))
    try:
        _head, before = await keep_alive_get(reader, writer, host)
        assert before["pid"] == served.proc.pid
        new = await upgrade(served)
        head, after = await keep_alive_get(reader, writer, host)  # the same connection, after the old one exited
        assert after["pid"] == new and b"close" not in head.lower()
    finally:
        writer.close()
        await served.stop()


async def slow_turn_upstream(http, sim, ws, first_byte_ms: int) -> asyncio.Task:
    """A turn whose answer upstream holds back `first_byte_ms`, once upstream has it."""
    await simclient.add_fault(http, sim, action="delay", transport="ws", first_byte_ms=first_byte_ms)
    turn = asyncio.create_task(ws_turn(ws, body(user("a slow one")), timeout=30))
    while not ws_records(sim):
        await asyncio.sleep(0.01)
    return turn


async def test_a_websocket_busy_at_the_hand_over_goes_on_once_its_response_is_out(settings, sim, tmp_path, http):
    served, url = await serving(settings, sim, tmp_path)
    try:
        async with http.ws_connect(f"{url}/backend-api/codex/responses", headers=WS_HEADERS) as ws:
            turn = await slow_turn_upstream(http, sim, ws, first_byte_ms=2000)
            upgraded = asyncio.create_task(upgrade(served))
            answer = await turn
            assert answer[-1]["type"] == "response.completed", answer
            await upgraded
            after = await ws_turn(ws, body(user("next"), previous_response_id=answer[-1]["response"]["id"]))
            assert after[-1]["type"] == "response.completed", after
            assert not ws.closed
    finally:
        await served.stop()
    first, second = ws_records(sim)
    assert second["previous_response_id"] == first["response_id"] and second["n_input"] == 1


async def test_a_keep_alive_connection_busy_at_the_hand_over_goes_on_once_its_response_is_out(settings, sim, tmp_path,
                                                                                              http):
    served, url = await serving(settings, sim, tmp_path)
    host = url.removeprefix("http://")
    reader, writer = await asyncio.open_connection(*host.rsplit(":", 1))
    try:
        await simclient.add_fault(http, sim, action="delay", transport="http", first_byte_ms=2000)
        payload = orjson.dumps(body(user("a slow one"), stream=True))
        writer.write(f"POST /backend-api/codex/responses HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        while not sim.backend.records_view():
            await asyncio.sleep(0.01)
        upgraded = asyncio.create_task(upgrade(served))
        stream = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 30)  # the last chunk of the answer
        assert b"response.completed" in stream and b"connection: close" not in stream.lower()
        new = await upgraded
        _head, after = await keep_alive_get(reader, writer, host)  # the same connection, in the new process
        assert after["pid"] == new
    finally:
        writer.close()
        await served.stop()


async def test_a_new_process_that_takes_no_connection_leaves_no_client_hanging(settings, sim, tmp_path, http):
    served, url = await serving(settings, sim, tmp_path, "--drain-timeout-s", "60")
    try:
        async with http.ws_connect(f"{url}/backend-api/codex/responses", headers=WS_HEADERS) as ws:
            # In flight until well after the new process is stopped.
            turn = await slow_turn_upstream(http, sim, ws, first_byte_ms=6000)
            rc, _out, err = await codexlb("upgrade", "--data-dir", str(served.data_dir))
            assert rc == 0, err
            new = served.holder().pid
            os.kill(new, signal.SIGSTOP)  # ready, then it reads nothing more
            try:
                assert (await turn)[-1]["type"] == "response.completed"
                # The socket, handed to a process that does not answer, is shut down: the client reconnects rather
                # than wait (and the old process does not wait out its drain for it).
                message = await ws.receive(timeout=conn_handover.SEND_WAIT_S + 10)
                assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
                await exited(served.proc, 10)
            finally:
                os.kill(new, signal.SIGCONT)
        async with http.get(f"{url}/health/live") as resp:  # the new process serves on
            assert (await resp.json())["pid"] == new
    finally:
        await served.stop()
    assert any(line["event"] == "upgrade: the new process takes no more connections; the rest drain here"
               for line in served.lines)
