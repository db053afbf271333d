"""`codexlb serve` replica processes of one fleet, for the end-to-end fleet tests (tests/e2e)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from codexlb import server_record
from tests.fleet.conftest import SECRET_KEY
from tests.serving import child_env

METRICS_TOKEN = "fleet-e2e-metrics"
IN_USE = re.compile(r"^codexlb_admission_in_use\{[^}]*\} (\S+)$", re.M)


@dataclass
class Replica:
    """One `codexlb serve` process; started again on the same port after a stop, or upgraded in place (the
    processes it hands over to share its log pipe). `env`: more of the replica's settings."""

    data: Path
    database_url: str
    sim: object
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    log: list[str] = field(default_factory=list)
    _reader: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "codexlb", "serve", "--port", str(self.port), "--data-dir", str(self.data),
            "--log-format", "json", "--database-url", self.database_url,
            "--upstream-base-url", self.sim.upstream_base_url, "--auth-base-url", self.sim.url,
            env=child_env(CODEXLB_SECRET_KEY=SECRET_KEY, CODEXLB_METRICS_TOKEN=METRICS_TOKEN, **self.env),
            stderr=asyncio.subprocess.PIPE)
        first = json.loads(await asyncio.wait_for(self.proc.stderr.readline(), 60))
        assert first["event"] == "listening", first
        self.port = int(first["url"].rsplit(":", 1)[1])
        # Read on, or a full pipe would stall the replica.
        self._reader = asyncio.create_task(self._read(self.proc.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.log.append(line.decode(errors="replace"))

    async def in_use(self, http) -> float:
        """Admission slots in use here: a request or a client WebSocket this replica is serving."""
        async with http.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as resp:
            assert resp.status == 200
            return sum(float(v) for v in IN_USE.findall(await resp.text()))

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        """`sig` to the process serving now (the one started, or the last one an upgrade handed over to), then
        until every process of this replica is gone (has closed the log pipe)."""
        holder = await asyncio.to_thread(server_record.holder, self.data)
        if holder is not None and holder.pid and self.proc is not None and holder.pid != self.proc.pid:
            os.kill(holder.pid, sig)
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 30)
