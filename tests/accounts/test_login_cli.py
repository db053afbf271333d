"""`codexlb accounts login` against the sim's sign-in server: device code and browser redirect."""

from __future__ import annotations

import asyncio
import json
import re
import sys

import pytest
from tests.serving import child_env

pytestmark = pytest.mark.usefixtures("clean_env")


async def start_login(tmp_path, sim, *args: str) -> asyncio.subprocess.Process:
    env = child_env()
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codexlb", "accounts", "login", *args, "--auth-base-url", sim.url,
        "--data-dir", str(tmp_path / "d"), "--port", "9", "--timeout", "60",
        env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def read_until(proc: asyncio.subprocess.Process, pattern: str) -> re.Match:
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "login ended before printing what the test waits for"
        found = re.search(pattern, line)
        if found:
            return found


async def accounts_in(tmp_path) -> list[dict]:
    env = child_env()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codexlb", "accounts", "list", "--json", "--data-dir", str(tmp_path / "d"),
        "--port", "9", env=env, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return json.loads(out)["accounts"]


async def test_device_code_login(tmp_path, sim, http):
    proc = await start_login(tmp_path, sim, "--device")
    try:
        found = await read_until(proc, r"Open (\S+) on any device and enter the code (\S+)")
        assert found.group(1) == f"{sim.url}/codex/device"
        async with http.post(f"{sim.url}/__sim/device/approve",
                             json={"user_code": found.group(2), "account": 2}) as resp:
            assert resp.status == 200
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "sim2 (sim2@codexlb.invalid): added" in out.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
    [account] = await accounts_in(tmp_path)
    assert account["id"] == sim.backend.accounts[1].account_id and account["status"] == "active"


async def test_browser_login_with_the_redirect(tmp_path, sim, http):
    proc = await start_login(tmp_path, sim, "--no-browser", "--callback-port", "0")
    try:
        url = (await read_until(proc, r"^\s+(http\S+/oauth/authorize\S+)")).group(1)
        # The browser: sign-in page redirects to the local callback server that the CLI runs.
        async with http.get(url) as resp:
            assert resp.status == 200
            assert "close this window" in (await resp.text()).lower()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
    [account] = await accounts_in(tmp_path)
    assert account["id"] == sim.backend.accounts[0].account_id


async def test_browser_login_with_a_pasted_url(tmp_path, sim, http):
    proc = await start_login(tmp_path, sim, "--no-browser", "--callback-port", "0")
    try:
        url = (await read_until(proc, r"^\s+(http\S+/oauth/authorize\S+)")).group(1)
        # A headless machine: the browser elsewhere lands on a callback address nobody serves; paste it.
        async with http.get(url, allow_redirects=False) as resp:
            landed = resp.headers["Location"]
        proc.stdin.write(b"not a url\n" + landed.encode() + b"\n")
        await proc.stdin.drain()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "added" in out.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert len(await accounts_in(tmp_path)) == 1


async def test_refused_sign_in_is_one_line(tmp_path, sim, http):
    async with http.post(f"{sim.url}/__sim/login/next", json={"error": "access_denied"}) as resp:
        assert resp.status == 200
    proc = await start_login(tmp_path, sim, "--no-browser", "--callback-port", "0")
    try:
        url = (await read_until(proc, r"^\s+(http\S+/oauth/authorize\S+)")).group(1)
        async with http.get(url) as resp:
            await resp.read()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 1
    assert err.decode().startswith("codexlb: error: ") and err.decode().count("\n") == 1
    assert await accounts_in(tmp_path) == []
