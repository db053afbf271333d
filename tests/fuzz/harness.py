"""The fuzz suite's stack and its checks.

`Stack` runs `codexlb sim` and `codexlb serve` in front of it (three of the sim's four accounts imported, one client
API key created) as separate processes, exactly as an operator would, and reads each one's JSON log lines
from its stderr on a thread of its own. Tests are plain functions (Hypothesis' `@given` drives them); they
talk to the server through an aiohttp client on a private event loop (`Stack.run`).

What every answer must be (`check_answer`): below 500, except the documented retriable 502 for an anchor
(`previous_response_id`) upstream does not know; every error in the OpenAI shape. What the server must be
after a test (`Stack.assert_healthy`): ready, serving a normal request, no admission slot held, and no
ERROR line logged (every request here is a client's doing, against a healthy upstream).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine, Mapping, TypeVar

import aiohttp
import orjson
from hypothesis import HealthCheck, settings
from yarl import URL
from tests.serving import child_env

T = TypeVar("T")
EXAMPLES_ENV = "CODEXLB_FUZZ_EXAMPLES"
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 15.0
# A request's answer, streamed or not, comes well within this from a healthy sim.
REQUEST_TIMEOUT_S = 30.0
_ERROR_LEVELS = frozenset({"error", "critical", "exception", "raw"})
# An anchor that could be a real response id: upstream may have lost it, which is the documented retriable
# 502. Empty ones and ones with white space or control characters are malformed: a 400, never a 502.
_WELL_FORMED_ANCHOR = re.compile(r"[^\s\x00-\x1f\x7f]+")
TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})
# In a generated body: stands for the id of the last response the server gave, so anchors can be real.
LAST_RESPONSE = b"resp_LAST"
_RESPONSE_ID = re.compile(rb'"id":\s*"(resp_[0-9a-f]+)"')


def fuzz_settings(examples: int) -> settings:
    """`examples` cases, the same ones on every run (CI stays deterministic); `CODEXLB_FUZZ_EXAMPLES=N` runs
    N cases per test instead, fresh ones each time."""
    on_demand = os.environ.get(EXAMPLES_ENV)
    return settings(max_examples=int(on_demand) if on_demand else examples, deadline=None,
                    derandomize=not on_demand, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def show(self) -> str:
        return f"{self.status} {self.body[:600]!r}"


class LogLines:
    """A process's stderr, read on a thread of its own: its JSON lines in order (any other line is kept as
    level "raw": nothing in codexlb writes to stderr outside its log)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.ended = False
        self._changed = threading.Condition()
        self._stream = stream
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True, name="fuzz-log-reader")
        self._reader.start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                record = {"level": "raw", "event": raw.rstrip("\n")}
            with self._changed:
                self.lines.append(record)
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The first line (from the start) that `match`es, waiting at most `timeout` for it."""
        seen = 0
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.lines[seen:]:
                    if match(record):
                        return record
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    raise AssertionError(f"no log line {what} within {timeout:g} s; last lines: {self.lines[-5:]}")
                self._changed.wait(left)

    def close(self) -> None:
        """Once the process has exited: the last lines read, the pipe closed."""
        self._reader.join(SETTLE_TIMEOUT_S)
        self._stream.close()

    def mark(self) -> int:
        with self._changed:
            return len(self.lines)

    def errors(self, since: int = 0) -> list[dict[str, Any]]:
        with self._changed:
            return [r for r in self.lines[since:] if str(r.get("level", "")).lower() in _ERROR_LEVELS]


def _env() -> dict[str, str]:
    return child_env()


def _spawn(*args: str) -> tuple[subprocess.Popen[str], LogLines]:
    proc = subprocess.Popen([sys.executable, "-m", "codexlb", *args], env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    return proc, LogLines(proc.stderr)


def _listening(log: LogLines, name: str) -> str:
    return log.wait_for(lambda r: r.get("event") == "listening", START_TIMEOUT_S, f"'listening' from {name}")["url"]


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


class Stack:
    """`codexlb sim` and `codexlb serve` in front of it, each its own process; see the module docstring."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self._procs: list[tuple[subprocess.Popen[str], LogLines]] = []
        try:
            self._boot(workdir / "sim-auth", workdir / "data")
        except BaseException:
            for proc, log in self._procs:
                proc.kill()
                proc.wait()
                log.close()
            self.loop.close()
            raise

    def _boot(self, auth_dir: Path, data_dir: Path) -> None:
        _, self.sim_log = self._start("sim", "--port", "0", "--accounts", "4", "--write-auth", str(auth_dir),
                                      "--log-format", "json", "--log-level", "info")
        self.sim_url = _listening(self.sim_log, "the sim")
        # Three accounts serve; the fourth's auth.json is the admin fuzz's to import, mangled or not.
        *served, self.spare_auth = sorted(auth_dir.glob("*/auth.json"))
        # Port 9 (discard) refuses at once: the import works on the data dir, not through any server.
        subprocess.run([sys.executable, "-m", "codexlb", "accounts", "import", *map(str, served),
                        "--data-dir", str(data_dir), "--port", "9"], env=_env(), check=True, timeout=START_TIMEOUT_S,
                       capture_output=True)
        self.server, self.log = self._start(
            "serve", "--port", "0", "--data-dir", str(data_dir), "--upstream-base-url", f"{self.sim_url}/backend-api",
            "--auth-base-url", self.sim_url, "--upstream-proxy", "direct", "--usage-poll-interval-s", "0",
            "--drain-timeout-s", "5", "--log-format", "json", "--log-level", "info")
        self.url = _listening(self.log, "codexlb")
        self.admin = {"Authorization": f"Bearer {(data_dir / 'admin.token').read_text().strip()}"}
        self.http = self.run(self._session())
        created = self.send("POST", "/api/keys", {**self.admin, "Content-Type": "application/json"},
                            b'{"name": "fuzz-harness"}')
        assert created.status == 201, created.show()
        # Proxy routes need it once any key exists (the admin fuzz creates keys of its own).
        self.key = created.json()["key"]
        self.client = {"Authorization": f"Bearer {self.key}"}
        self.last_response = LAST_RESPONSE

    def _start(self, *args: str) -> tuple[subprocess.Popen[str], LogLines]:
        proc, log = _spawn(*args)
        self._procs.append((proc, log))
        return proc, log

    async def _session(self) -> aiohttp.ClientSession:
        # A connection of its own for each request: one request's end (the server may close after an error)
        # never becomes the next one's failure.
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S), auto_decompress=False,
                                     connector=aiohttp.TCPConnector(limit=0, force_close=True))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def send(self, method: str, path: str, headers: Mapping[str, str] | None = None,
             body: bytes | None = None) -> Reply:
        """One request with exactly these headers (no Content-Type of the client's own) and body; `path` is
        sent as it is, already percent-encoded."""
        return self.run(self._send(method, path, headers or {}, body))

    async def _send(self, method: str, path: str, headers: Mapping[str, str], body: bytes | None) -> Reply:
        url = URL(self.url + path, encoded=True)
        async with self.http.request(method, url, headers=headers, data=body,
                                     skip_auto_headers=("Content-Type",)) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    def anchored(self, data: bytes) -> bytes:
        """`data` with LAST_RESPONSE made the last response id seen (`seen`)."""
        return data.replace(LAST_RESPONSE, self.last_response)

    def seen(self, data: bytes) -> None:
        """Note the last response id in an answer, for `anchored`."""
        ids = _RESPONSE_ID.findall(data)
        if ids:
            self.last_response = ids[-1]

    def close(self) -> list[int]:
        """Stop both processes (SIGTERM, as an operator would); their exit codes."""
        self.run(self.http.close())
        self.loop.close()
        codes = []
        for proc, log in reversed(self._procs):
            codes.append(_stop(proc))
            log.close()
        return codes

    # After a test -------------------------------------------------------------------------------------------

    def sync_log(self) -> None:
        """Every line the server logged so far is read: its line for a request made now has arrived."""
        marker = f"fuzz-sync-{uuid.uuid4().hex}"
        assert self.send("GET", "/health/live", {"x-request-id": marker}).status == 200
        self.log.wait_for(lambda r: r.get("request_id") == marker, SETTLE_TIMEOUT_S, f"for request {marker}")

    def busy_gates(self) -> dict[str, Any]:
        reply = self.send("GET", "/api/admission", self.admin)
        assert reply.status == 200, reply.show()
        return {name: gate for name, gate in reply.json()["gates"].items() if gate["in_use"] or gate["waiting"]}

    def assert_idle(self) -> None:
        """No admission slot held or waited for, once the requests that ended on the client's side ended on
        the server's too (a bounded poll)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while busy := self.busy_gates():
            assert time.monotonic() < deadline, f"admission slots still held: {busy}"
            time.sleep(0.02)

    def assert_healthy(self, since: int) -> None:
        """Ready, a normal request served, every gate idle, and no ERROR line logged since `since`."""
        ready = self.send("GET", "/health/ready")
        assert ready.status == 200, ready.show()
        normal = self.send("POST", "/v1/responses", {**self.client, "Content-Type": "application/json"},
                           b'{"model": "gpt-5.5", "input": "hello"}')
        assert normal.status == 200 and normal.json().get("status") == "completed", normal.show()
        self.assert_idle()
        self.sync_log()
        errors = self.log.errors(since)
        assert not errors, f"{len(errors)} ERROR line(s) logged for clients' requests, the first: " + "\n".join(
            json.dumps(e)[:2000] for e in errors[:3])
        assert self.server.poll() is None, "codexlb exited"


# What an answer must be ---------------------------------------------------------------------------------------


def anchor_of(body: bytes | None) -> Any:
    """The `previous_response_id` of a request body as the server reads it (through a real gzip or deflate)."""
    for decoded in (lambda b: b, gzip.decompress, zlib.decompress):
        try:
            payload = orjson.loads(decoded(body or b""))
        except (ValueError, OSError, EOFError, zlib.error):
            continue
        return payload.get("previous_response_id") if isinstance(payload, dict) else None
    return None


def retriable_502(reply: Reply, anchor: Any) -> bool:
    """The documented retriable 502: an anchor upstream does not know, which a reconnect may yet find."""
    if reply.status != 502 or not (isinstance(anchor, str) and _WELL_FORMED_ANCHOR.fullmatch(anchor)):
        return False
    error = reply.json()["error"]
    return error.get("code") == "upstream_unavailable" and error.get("type") == "server_error"


def assert_openai_error(body: Any, shown: str) -> None:
    """`{"error": {"message", "type", "code", ...}}` (a WebSocket `error` event has more beside it), no internals."""
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), shown
    assert isinstance(error.get("message"), str) and error["message"], shown
    assert isinstance(error.get("type"), str) and error["type"], shown
    assert "code" in error and (error["code"] is None or isinstance(error["code"], str)), shown
    assert "Traceback" not in error["message"], shown


def assert_error_shape(reply: Reply) -> None:
    try:
        body = reply.json()
    except orjson.JSONDecodeError:
        raise AssertionError(f"error body is not JSON: {reply.show()}") from None
    assert_openai_error(body, reply.show())


def sse_events(body: bytes) -> list[dict[str, Any]]:
    events = []
    for block in body.split(b"\n\n"):
        data = [line[5:].strip() for line in block.splitlines() if line.startswith(b"data:")]
        if data and data[0] != b"[DONE]":
            events.append(orjson.loads(b"\n".join(data)))
    return events


def check_answer(reply: Reply, body: bytes | None, *, method: str = "POST") -> None:
    """Any answer to a client's request: see the module docstring."""
    if reply.status >= 500:
        assert retriable_502(reply, anchor_of(body)), f"5xx for a client's request: {reply.show()}"
    if reply.status >= 400 and method != "HEAD":
        assert_error_shape(reply)
    elif reply.status == 200 and reply.headers.get("Content-Type", "").startswith("text/event-stream"):
        if reply.body.rstrip().endswith(b"data: [DONE]"):  # Chat Completions: chunks, then [DONE]
            return
        events = sse_events(reply.body)
        assert events and events[-1].get("type") in TERMINAL, f"a stream without its terminal event: {reply.show()}"
