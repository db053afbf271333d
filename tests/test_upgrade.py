"""`codexlb upgrade` (SIGUSR2): a real `serve` process hands its socket and data dir over to a new process while
streaming clients keep it busy: no connection refused, no request failed; a new process that cannot start
leaves the old one serving, and the command says why."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp

from codexlb import server_record
from tests.fleet.conftest import import_accounts
from tests.serving import child_env
from tests.simclient import body, parse_sse, user

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

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(self.data_dir),
            "--log-format", "json", "--upstream-base-url", self.sim.upstream_base_url,
            "--auth-base-url", self.sim.url, env=child_env(), stderr=asyncio.subprocess.PIPE)
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
                            clients: int = CLIENTS) -> None:
    async def client(n: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
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
