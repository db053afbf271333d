"""`serve --workers N` upgraded (SIGUSR2, `codexlb upgrade`) and reloaded (SIGHUP, `codexlb reload`) as real
processes under streaming clients: the parent hands the socket and the data dir to a new parent, whose workers
serve before the old ones drain; no request fails, and the old parent exits once its workers have drained."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import sys

from codexlb import server_record
from tests.fleet.conftest import import_accounts
from tests.serving import child_env
from tests.test_upgrade import CLIENTS, codexlb, streaming_clients

WORKERS = 2


class ServedWorkers:
    """A `codexlb serve --workers N` parent (and the parent it hands over to: they share its stderr pipe)."""

    def __init__(self, data_dir, sim) -> None:
        self.data_dir, self.sim = data_dir, sim
        self.lines: list[dict] = []

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "codexlb", "serve", "--workers", str(WORKERS), "--port", "0",
            "--data-dir", str(self.data_dir), "--log-format", "json", "--upstream-base-url",
            self.sim.upstream_base_url, "--auth-base-url", self.sim.url, env=child_env(),
            stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        await self.until(lambda: self.count("worker ready") == WORKERS)
        return next(line["url"] for line in self.lines if line["event"] == "listening")

    async def _read(self) -> None:
        async for raw in self.proc.stderr:
            if raw.startswith(b"{"):
                self.lines.append(json.loads(raw))

    def count(self, event: str) -> int:
        return sum(line["event"] == event for line in self.lines)

    async def until(self, condition) -> None:
        """Until `condition()` holds (log lines and client outcomes come in as the loop runs)."""
        async with asyncio.timeout(60):
            while not condition():
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        holder = server_record.holder(self.data_dir)
        if holder is not None and holder.pid:
            os.kill(holder.pid, signal.SIGTERM)
        await asyncio.wait_for(self._reader, 60)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_workers_upgraded_and_reloaded_under_streaming_load_fail_nothing(settings, sim, tmp_path):
    data_dir = tmp_path / "data"
    await import_accounts(dataclasses.replace(settings, data_dir=data_dir), sim)
    served = ServedWorkers(data_dir, sim)
    url = await served.start()
    old_workers = {line["pid"] for line in served.lines if line["event"] == "worker ready"}
    stop, outcomes, failures = asyncio.Event(), {"ok": 0, "failed": 0}, []
    clients = asyncio.create_task(streaming_clients(url, stop, outcomes, failures))
    try:
        await served.until(lambda: outcomes["ok"] >= CLIENTS)

        # SIGHUP in the parent is passed on: every worker applies the change, and the parent says what it was.
        (data_dir / "config.toml").write_text("max_inflight = 64\n")
        rc, out, err = await codexlb("reload", "--data-dir", str(data_dir))
        assert rc == 0 and "max_inflight" in out, err
        await served.until(lambda: served.count("settings reloaded") == WORKERS + 1)
        assert sorted(line.get("worker", 0) for line in served.lines if line["event"] == "settings reloaded") == [
            0, 1, 2]

        before = outcomes["ok"]
        rc, out, err = await codexlb("upgrade", "--data-dir", str(data_dir))
        assert rc == 0, err
        new_parent = server_record.holder(data_dir).pid
        assert new_parent != served.proc.pid and f"handed over to pid {new_parent}" in out
        # The old parent exits once its workers drained (its stderr, shared with the new one, stays open).
        await served.until(lambda: served.proc.returncode is not None)
        assert served.proc.returncode == 0
        new_workers = {line["pid"] for line in served.lines if line["event"] == "worker ready"} - old_workers
        assert len(new_workers) == WORKERS and all(map(alive, new_workers))
        assert not any(map(alive, old_workers))
        after = outcomes["ok"]
        await served.until(lambda: outcomes["ok"] >= after + CLIENTS)  # the new workers serve
        assert after > before
    finally:
        stop.set()
        await asyncio.wait_for(clients, 60)
        await served.stop()
    print(f"\n`serve --workers {WORKERS}` upgraded under {CLIENTS} streaming clients: {outcomes['ok']} requests "
          f"served, {outcomes['failed']} failed")
    assert failures == []
    assert server_record.holder(data_dir) is None
    assert [line for line in served.lines if line["level"] in ("error", "critical")] == []


async def test_a_new_parent_that_cannot_start_leaves_the_old_one_serving(settings, sim, tmp_path, http):
    data_dir = tmp_path / "data"
    served = ServedWorkers(data_dir, sim)
    url = await served.start()
    try:
        old = served.proc.pid
        # The new parent starts (it opens no database), its workers cannot: it says so to the old one.
        (data_dir / "config.toml").write_text(f'secret_key_file = "{tmp_path / "missing.key"}"\n')
        rc, _out, err = await codexlb("upgrade", "--data-dir", str(data_dir))
        assert rc == 1, err
        assert re.search(rf"upgrade failed; pid {old} goes on serving: worker \d could not start", err), err
        assert server_record.holder(data_dir).pid == old
        async with http.get(f"{url}/health/ready") as resp:
            assert resp.status == 200
    finally:
        await served.stop()
    assert await asyncio.wait_for(served.proc.wait(), 60) == 0
