"""One server per data dir, and the admin CLI finds it there: real `codexlb` processes on port 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from codexlb.server_record import LOCK_FILE, RECORD_FILE
from tests.serving import child_env, codexlb

KEY = re.compile(r"sk-clb-[A-Za-z0-9_-]{43}")
# Nothing upstream answers: these tests are about the data dir, not the pool.
OFFLINE = ("--upstream-base-url", "http://127.0.0.1:9", "--auth-base-url", "http://127.0.0.1:9",
           "--usage-poll-interval-s", "0")


def _env() -> dict[str, str]:
    return child_env()


@asynccontextmanager
async def serve_process(data: Path, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`codexlb serve --port 0` on `data` until the block ends; yields the process and its URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(data), "--log-format", "json",
        *OFFLINE, *args, env=_env(), stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        first = json.loads(await asyncio.wait_for(proc.stderr.readline(), 30))
        assert first["event"] == "listening", first
        yield proc, first["url"]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def bounded(*args: str, timeout: float = 30) -> tuple[int | None, str]:
    """`codexlb ARGS` given `timeout` seconds; a command still running then is killed (rc None)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "codexlb", *args, env=_env(),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None, ""
    return proc.returncode, err.decode()


async def test_keys_create_without_port_goes_through_the_server_on_the_data_dir(tmp_path):
    """Served on a port of its own, the server still gets the key: the CLI finds it through the data dir."""
    data = tmp_path / "d"
    async with serve_process(data) as (_, url), aiohttp.ClientSession() as http:
        port = url.rsplit(":", 1)[1]
        rc, out, err = await codexlb("keys", "create", "--name", "k2", "--data-dir", str(data))
        assert rc == 0, err
        assert f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in out
        [key] = KEY.findall(out)
        async with http.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status != 401
        async with http.get(f"{url}/v1/models") as resp:
            assert resp.status == 401  # the server enforces the key made through it
        rc, out, err = await codexlb("keys", "list", "--data-dir", str(data))
        assert rc == 0 and "k2" in out, err


async def test_a_second_server_on_the_data_dir_refuses_naming_the_first(tmp_path):
    data = tmp_path / "d"
    async with serve_process(data) as (first, url):
        before = sorted(os.listdir(data))
        rc, err = await bounded("serve", "--port", "0", "--data-dir", str(data), *OFFLINE)
        assert rc == 1, "the second server started"
        [line] = err.strip().splitlines()
        assert f"pid {first.pid} at {url}" in line and str(data) in line, line
        assert sorted(os.listdir(data)) == before
        async with aiohttp.ClientSession() as http, http.get(f"{url}/health/live") as resp:
            assert resp.status == 200  # the first is untouched


async def test_a_killed_server_leaves_a_stale_record_the_next_command_and_server_see_through(tmp_path):
    data = tmp_path / "d"
    async with serve_process(data) as (proc, url):
        record = json.loads((data / RECORD_FILE).read_text())
        assert (record["pid"], f"http://{record['host']}:{record['port']}") == (proc.pid, url)
        proc.kill()
        await proc.wait()
    assert (data / RECORD_FILE).exists()  # no clean exit: the record stays, its lock went with the process
    rc, out, err = await codexlb("keys", "create", "--name", "offline", "--data-dir", str(data))
    assert rc == 0 and "OPENAI_BASE_URL=http://127.0.0.1:2455/v1" in out, err
    async with serve_process(data) as (again, url_again):
        assert json.loads((data / RECORD_FILE).read_text())["pid"] == again.pid
        rc, out, err = await codexlb("keys", "list", "--data-dir", str(data))
        assert rc == 0 and "offline" in out, err
    # A clean exit takes record and lock away.
    assert not (data / RECORD_FILE).exists() and not (data / LOCK_FILE).exists()


async def test_a_server_holding_the_data_dir_but_not_answering_is_not_written_behind(tmp_path):
    data = tmp_path / "d"
    async with serve_process(data) as (proc, url):
        proc.send_signal(signal.SIGSTOP)
        try:
            rc, err = await bounded("keys", "create", "--name", "behind", "--data-dir", str(data))
        finally:
            proc.send_signal(signal.SIGCONT)
        assert rc == 1
        [line] = err.strip().splitlines()
        assert f"pid {proc.pid} at {url}" in line and "does not answer" in line, line
        rc, out, err = await codexlb("keys", "list", "--data-dir", str(data))
        assert rc == 0 and "behind" not in out, err


@pytest.mark.sqlite_only
async def test_failed_commands_leave_the_data_dir_as_it_was(tmp_path):
    data = tmp_path / "fresh"
    not_json = tmp_path / "README.md"
    not_json.write_text("# not an auth.json\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for args in (("accounts", "import", str(not_json)), ("keys", "revoke", "nope"),
                     ("accounts", "pause", "nobody"),
                     ("serve", "--port", str(busy.getsockname()[1]), *OFFLINE),
                     ("serve", "--host", "0.0.0.0", "--port", "0", *OFFLINE)):
            rc, err = await bounded(*args, "--data-dir", str(data))
            assert rc not in (0, None), args
            assert not data.exists(), (args, err, sorted(os.listdir(data)))
    finally:
        busy.close()
    # One that works keeps its data dir; a failure after it takes back only what it made.
    rc, _ = await bounded("keys", "create", "--name", "k", "--data-dir", str(data))
    assert rc == 0
    kept = sorted(os.listdir(data))
    rc, _ = await bounded("serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(data),
                          "--secret-key-file", str(tmp_path / "elsewhere.key"), *OFFLINE)
    assert rc == 1 and sorted(os.listdir(data)) == kept


@pytest.mark.sqlite_only
async def test_listing_a_data_dir_that_does_not_exist_makes_none(tmp_path):
    data = tmp_path / "fresh"
    for args in (("keys", "list"), ("accounts", "list")):
        rc, err = await bounded(*args, "--data-dir", str(data))
        assert rc == 0, err
        assert not data.exists(), args
