"""A real HAProxy (Debian's) in front of codexlb replicas, for the fleet tests.

`async with running_haproxy([(host, port), ...], mode="hash") as front:` listens on `front.url`; every response
carries `x-served-by: s<index>` naming the backend that served it. "hash" pins each Codex CLI session (its
`session-id` header, sent on HTTP requests and on the WebSocket handshake) to one backend; "roundrobin" is the
worst case, where every request may land elsewhere. Missing haproxy skips the test, or fails it when CI is set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

from tests.pgserver import free_port, missing

SESSION_HEADER = "session-id"  # the Codex CLI's cross-turn key (shared/protocol/codex-cli.md)
SERVED_BY = "x-served-by"
READY_ROUTE = "/health/ready"  # codexlb/handlers/health.py: 503 while draining
CHECK_INTERVAL_MS = 500
START_TIMEOUT_S = 10
MODES = ("hash", "roundrobin")
LOADED = "Loading success."  # the master's log line after each start and reload
SERVED_LOG = "served"


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


def config(port: int, backends: list[tuple[str, int]], mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    # Hash-type consistent: adding or removing a replica moves only its share of the sessions. A request with no
    # session header falls back to round-robin.
    balance = f"balance hdr({SESSION_HEADER})\n    hash-type consistent" if mode == "hash" else "balance roundrobin"
    servers = "\n".join(f"    server s{i} {host}:{bport} check" for i, (host, bport) in enumerate(backends))
    return f"""global
    maxconn 4096
    log stderr format raw local0 info

defaults
    mode http
    log global
    # One line per request (a WebSocket's when its tunnel ends): which replica served it, for `served()`, and how
    # often connecting to a replica was retried (refused), for `retries()`, and the Codex CLI session's header.
    log-format "{SERVED_LOG} %s %ST %HM %HU %rc %[capture.req.hdr(0)]"
    timeout connect 5s
    # Streams run for minutes, and WebSockets for as long as a CLI session: long idle limits on both sides.
    timeout client 30m
    timeout server 30m
    timeout tunnel 2h
    timeout http-keep-alive 60s
    # A replica that refuses the connection (killed) is retried on another one instead of failing the request.
    retries 3
    option redispatch

frontend front
    bind 127.0.0.1:{port}
    http-request capture req.hdr({SESSION_HEADER}) len 64
    default_backend replicas

backend replicas
    {balance}
    option httpchk GET {READY_ROUTE}
    http-check expect status 200
    default-server inter {CHECK_INTERVAL_MS}ms fall 2 rise 1
    http-response set-header {SERVED_BY} %s
{servers}
"""


class HAProxy:
    """One master-worker haproxy process; `reload()` applies a new backend list without dropping connections."""

    def __init__(self, binary: str, backends: list[tuple[str, int]], mode: str) -> None:
        self.binary = binary
        self.backends = list(backends)
        self.mode = mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="codexlb-haproxy-"))
        self._cfg = self._dir / "haproxy.cfg"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._write()
        with open(self._dir / "haproxy.log", "wb") as log:
            self._proc = await asyncio.create_subprocess_exec(self.binary, "-W", "-db", "-f", str(self._cfg),
                                                              stdout=asyncio.subprocess.DEVNULL, stderr=log)
        await self._wait_loaded(1)

    async def reload(self, backends: list[tuple[str, int]] | None = None) -> None:
        """Rewrite the config (with `backends` if given) and reload: the master starts new workers, old ones drain.

        Client connections kept alive across the reload stay on an old worker, with the old config, until closed.
        """
        if backends is not None:
            self.backends = list(backends)
        self._write()
        loaded = self.log().count(LOADED)
        self._proc.send_signal(signal.SIGUSR2)
        await self._wait_loaded(loaded + 1)

    async def stop(self) -> None:
        if self._proc and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def served(self, session: str | None = None) -> list[tuple[str, int, str, str]]:
        """(backend, status, method, path) of every request finished so far, in the order they finished; only
        those of the Codex CLI session `session` if given."""
        return [(backend, int(status), method, path) for backend, status, method, path, _rc, sent in self._lines()
                if session is None or sent == session]

    def retries(self) -> int:
        """Connections to a replica that failed (refused) and were tried again, over every request so far."""
        # %rc is "+n" when the last try went to another replica (redispatch).
        return sum(int(rc.lstrip("+")) for *_served, rc, _session in self._lines())

    def _lines(self) -> list[list[str]]:
        # A request without the session header logs "-" there.
        return [words[1:] for words in map(str.split, self.log().splitlines())
                if len(words) == 7 and words[0] == SERVED_LOG]

    def log(self) -> str:
        path = self._dir / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write(self) -> None:
        self._cfg.write_text(config(self.port, self.backends, self.mode))

    async def _wait_loaded(self, count: int) -> None:
        """Until the master has logged its `count`th successful load (start or reload), and the port accepts."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while True:
            if self._proc.returncode is not None:
                raise RuntimeError(f"haproxy exited {self._proc.returncode}: {self.log()[-2000:]}")
            if self.log().count(LOADED) >= count and self._takes_reload_signal() and await self._accepts():
                return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"haproxy not loaded after {START_TIMEOUT_S} s: {self.log()[-2000:]}")
            await asyncio.sleep(0.05)  # polling a log file and a port: nothing to wait on instead

    def _takes_reload_signal(self) -> bool:
        # The master logs its load while SIGUSR2 is still blocked, and a SIGUSR2 sent then is lost: wait for its
        # handler (Linux /proc: SigBlk and SigCgt are hex masks, bit n-1 for signal n).
        masks = dict(line.split(":\t") for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines()
                     if line.startswith(("SigBlk", "SigCgt")))
        bit = 1 << (signal.SIGUSR2 - 1)
        return not int(masks["SigBlk"], 16) & bit and bool(int(masks["SigCgt"], 16) & bit)

    async def _accepts(self) -> bool:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True


@asynccontextmanager
async def running_haproxy(backends: list[tuple[str, int]], mode: str = "hash"):
    binary = find_haproxy()
    if binary is None:
        missing("haproxy")
    front = HAProxy(binary, backends, mode)
    try:
        await front.start()
        yield front
    finally:
        await front.stop()
