"""One long-lived Codex CLI: `codex app-server` (JSON-RPC over stdio) runs turn after turn in one process, as the
TUI does, so its WebSocket and its `previous_response_id` anchor live across turns. `codex exec` starts afresh
per turn, and its first request always carries the whole history; only a long-lived CLI shows whether something
(a hand-over, a closed socket) made it resend its history.

The CLI's own debug log says when it opens a WebSocket and whether each request is incremental; both are
counted here, from the CLI's side of the wire."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.e2e.test_codex_cli_sim import CodexHome, _kill_group

CALL_TIMEOUT_S = 60.0
TURN_TIMEOUT_S = 120.0
# Enough to see each WebSocket connect ("connecting to Responses WebSocket"), each request the CLI could not
# send as an increment of its last one on that socket ("non-incremental request": the whole history), and retries.
LOG = "warn,codex_api::endpoint::responses_websocket=info,codex_core::client=trace"
CONNECT = "connecting to Responses WebSocket"
WHOLE = "non-incremental request"
RETRY = re.compile(r"retrying sampling request|Reconnecting", re.I)


class AppServer:
    """`codex app-server` in `home`: turns on one thread, approvals accepted, stderr kept."""

    def __init__(self, home: CodexHome) -> None:
        self.home = home
        self.proc: asyncio.subprocess.Process | None = None
        self.thread_id = ""
        self.notes: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._turn_done = asyncio.Event()
        self._readers: list[asyncio.Task] = []

    async def __aenter__(self) -> "AppServer":
        self.proc = await asyncio.create_subprocess_exec(
            str(self.home.binary), "app-server", cwd=self.home.cwd, env={**self.home.env, "RUST_LOG": LOG},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)  # its own process group: the tools it started go with it
        self._readers = [asyncio.create_task(self._read()), asyncio.create_task(self._read_err())]
        await self.call("initialize", {"clientInfo": {"name": "codexlb_tests", "version": "0.1"}})
        await self._send({"method": "initialized"})
        thread = await self.call("thread/start", {"cwd": str(self.home.cwd), "approvalPolicy": "never",
                                                  "sandbox": "danger-full-access", "ephemeral": True})
        self.thread_id = thread["thread"]["id"]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.proc is not None
        _kill_group(self.proc.pid)
        await asyncio.wait_for(self.proc.wait(), 10)
        for reader in self._readers:
            reader.cancel()

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if "id" in msg and ("result" in msg or "error" in msg):
                self._pending.pop(msg["id"]).set_result(msg)
            elif "id" in msg:  # the server asks (an approval): accept
                await self._send({"id": msg["id"], "result": {"decision": "accept"}})
            else:
                self.notes.append(msg)
                if msg.get("method") == "turn/completed":
                    self._turn_done.set()

    async def _read_err(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr.extend(chunk)

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        await self.proc.stdin.drain()

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        reply = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = reply
        await self._send({"id": self._next_id, "method": method, "params": params})
        got = await asyncio.wait_for(reply, CALL_TIMEOUT_S)
        if "error" in got:
            pytest.fail(f"app-server {method}: {got['error']}\n{self.log()}", pytrace=False)
        return got["result"]

    async def turn(self, text: str) -> str:
        """One turn; its final agent message. Fails the test if the turn did not complete."""
        self._turn_done.clear()
        first = len(self.notes)
        await self.call("turn/start", {"threadId": self.thread_id, "input": [{"type": "text", "text": text}]})
        try:
            await asyncio.wait_for(self._turn_done.wait(), TURN_TIMEOUT_S)
        except TimeoutError:
            pytest.fail(f"turn did not complete within {TURN_TIMEOUT_S:.0f} s\n{self.log()}", pytrace=False)
        notes = self.notes[first:]
        completed = next(n for n in reversed(notes) if n.get("method") == "turn/completed")["params"]
        status = completed["turn"]["status"]
        if status != "completed":
            pytest.fail(f"turn ended {status}: {completed['turn'].get('error')}\n{self.log()}", pytrace=False)
        texts = [n["params"]["item"]["text"] for n in notes if n.get("method") == "item/completed"
                 and n["params"]["item"].get("type") == "agentMessage"]
        return texts[-1] if texts else ""

    def _lines(self, sign: str | re.Pattern[str]) -> list[str]:
        lines = self.stderr.decode(errors="replace").splitlines()
        return [ln for ln in lines if (sign.search(ln) if isinstance(sign, re.Pattern) else sign in ln)]

    def connects(self) -> int:
        """WebSockets the CLI opened."""
        return len(self._lines(CONNECT))

    def whole_sends(self) -> int:
        """Requests the CLI sent with its whole history: its first, and one after each socket it lost."""
        return len(self._lines(WHOLE))

    def retries(self) -> list[str]:
        return self._lines(RETRY)

    def log(self, tail: int = 60) -> str:
        lines = self.stderr.decode(errors="replace").splitlines()
        return "--- app-server stderr (tail)\n" + "\n".join(lines[-tail:])
