"""`serve` lifecycle: real sockets, real signals, real processes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from codexlb import server
from codexlb.app import create_app
from tests.serving import child_env


@contextlib.asynccontextmanager
async def slow_request(settings) -> AsyncIterator[tuple[asyncio.Task, str, asyncio.Task, asyncio.Event]]:
    """`serve` on the real app plus a `/slow` route, with one request to it in flight: the server's task, its
    URL, the request's task, and the event that lets the request be answered."""
    entered, release = asyncio.Event(), asyncio.Event()
    app = create_app(settings)

    async def slow(_request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"done": True})

    app.router.add_get("/slow", slow)
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(server.serve(settings, app=app, on_listening=listening.set_result))
    url = await asyncio.wait_for(listening, 10)
    async with aiohttp.ClientSession() as http:
        request = asyncio.create_task(http.get(f"{url}/slow"))
        await asyncio.wait_for(entered.wait(), 10)
        yield task, url, request, release


async def drain_begun(url: str) -> None:
    """Until the server refuses connections: its drain has begun (the signal is handled on the loop's next
    turns)."""
    host, port = url.removeprefix("http://").split(":")
    async with asyncio.timeout(10):
        while True:
            try:
                _reader, writer = await asyncio.open_connection(host, int(port))
            except ConnectionRefusedError:
                return
            writer.close()
            await asyncio.sleep(0.01)


async def test_in_flight_request_completes_after_sigterm(settings):
    async with slow_request(settings) as (task, url, slow, release):
        os.kill(os.getpid(), signal.SIGTERM)
        await drain_begun(url)  # the listener is closed, while /slow is still in flight
        assert not slow.done()
        release.set()
        resp = await asyncio.wait_for(slow, 10)
        assert resp.status == 200
        assert await resp.json() == {"done": True}
        assert resp.headers["Connection"] == "close"  # told not to send its next request on this connection
    await asyncio.wait_for(task, 10)


async def test_drain_timeout_bounds_the_wait(settings):
    settings = dataclasses.replace(settings, drain_timeout_s=0.2)
    async with slow_request(settings) as (task, url, slow, _release):
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 5)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(slow, 5)


async def test_second_signal_stops_draining(settings, monkeypatch):
    monkeypatch.setattr(server, "REPEAT_GRACE_S", 0.0)
    settings = dataclasses.replace(settings, drain_timeout_s=60)
    async with slow_request(settings) as (task, url, slow, _release):
        os.kill(os.getpid(), signal.SIGTERM)
        await drain_begun(url)
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        slow.cancel()


async def test_port_in_use_is_a_startup_error(settings):
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(server.StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            await server.serve(dataclasses.replace(settings, port=port))
    finally:
        blocker.close()


def test_serve_process_sigterm_exits_zero(tmp_path):
    """The real command: data dir made private, ready answers, SIGTERM exits 0."""
    data_dir = tmp_path / "data"
    env = child_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(data_dir),
         "--log-format", "json"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = json.loads(proc.stderr.readline())
        assert first["event"] == "listening", first
        import urllib.request

        with urllib.request.urlopen(first["url"] + "/health/ready", timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        events = [json.loads(line)["event"] for line in proc.stderr.read().splitlines()]
        assert events[-2:] == ["draining", "stopped"]
        assert oct(data_dir.stat().st_mode & 0o777) == "0o700"
    finally:
        proc.kill()
        proc.wait()


async def test_repeat_signal_within_grace_does_not_cut_the_drain(settings):
    """The frozen binary's launcher forwards the terminal's Ctrl-C: two signals, one keypress."""
    async with slow_request(settings) as (task, url, slow, release):
        os.kill(os.getpid(), signal.SIGINT)
        await drain_begun(url)
        os.kill(os.getpid(), signal.SIGINT)  # the launcher's copy, well within the grace
        await asyncio.sleep(0)
        release.set()
        assert (await asyncio.wait_for(slow, 10)).status == 200
    await asyncio.wait_for(task, 10)


def test_late_duplicate_sigterm_after_drain_still_exits_zero(tmp_path):
    """systemd, or the launcher, may signal again while a drained process exits: still a clean stop."""
    env = child_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(tmp_path / "d"),
         "--log-format", "json"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert json.loads(proc.stderr.readline())["event"] == "listening"
        proc.send_signal(signal.SIGTERM)
        for line in proc.stderr:
            if json.loads(line)["event"] == "stopped":
                break
        # Signals all through the teardown, until the process is gone: none may break it.
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
