"""A newcomer's first hour, as README tells it, with real processes and the real Codex CLI against the sim:
the demo's Codex command leaves ~/.codex alone, and README's "First real run" steps work as written."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import sys
from pathlib import Path

import aiohttp
import orjson

README = Path(__file__).resolve().parents[2] / "README.md"
TIMEOUT_S = 120


def _env(home: Path, codex_bin: Path, **extra: str) -> dict[str, str]:
    """A shell with nothing of the developer's: this venv's `codexlb` and the Codex CLI on PATH, a fresh HOME."""
    path = os.pathsep.join((str(Path(sys.executable).parent), str(codex_bin.parent), "/usr/bin", "/bin"))
    return {"PATH": path, "HOME": str(home), "NO_COLOR": "1", **extra}


async def _sh(command: str, env: dict[str, str], cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec("bash", "-ec", command, env=env, cwd=cwd, start_new_session=True,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{text}"
    return text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_live(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            assert proc.returncode is None, "the server exited"
            try:
                async with http.get(f"{url}/health/live") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # polling a port that is not open yet: there is nothing to wait on
    raise AssertionError(f"{url} never answered")


async def test_the_demos_codex_command_answers_and_leaves_the_users_codex_home_alone(tmp_path, codex_bin):
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home, codex_bin)
    demo = await asyncio.create_subprocess_exec(sys.executable, "-m", "codexlb", "demo", "--port", "0", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        printed = ""
        while "Ctrl-C stops it." not in printed:
            line = await asyncio.wait_for(demo.stdout.readline(), TIMEOUT_S)
            assert line, f"the demo exited:\n{printed}"
            printed += line.decode()
        found = re.search(r"^Codex CLI.*\n\n((?:  .*\n)+)", printed, re.M)
        assert found, f"no Codex CLI command in the demo's instructions:\n{printed}"
        command = found.group(1).replace("\\\n", " ")
        assert "config.toml" not in command
        answer = await _sh(f"{command.strip()} exec --skip-git-repo-check 'Say hello'", env, tmp_path)
        assert "You said: Say hello" in answer
        assert not (home / ".codex").exists(), "the demo's command wrote into ~/.codex"
    finally:
        demo.terminate()
        await demo.wait()


def _first_run_blocks() -> list[tuple[str, str]]:
    section = README.read_text().split("\n## First real run\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^ *```(\w+)\n(.*?)^ *```$", section, re.M | re.S)
    return [(kind, "\n".join(line.strip() for line in body.splitlines())) for kind, body in blocks]


async def test_readmes_first_real_run_works_as_written(tmp_path, sim, codex_bin):
    """Every command of the section, in order, as a newcomer types them; only the upstream (the sim, through
    CODEXLB_UPSTREAM_BASE_URL / CODEXLB_AUTH_BASE_URL) and the port differ."""
    home, work = tmp_path / "home", tmp_path / "project"
    (home / ".codex").mkdir(parents=True)
    work.mkdir()
    (home / ".codex" / "auth.json").write_bytes(orjson.dumps(sim.backend.accounts[0].auth_json()))
    port = _free_port()
    env = _env(home, codex_bin, CODEXLB_UPSTREAM_BASE_URL=sim.upstream_base_url, CODEXLB_AUTH_BASE_URL=sim.url,
               CODEXLB_PORT=str(port))
    await _sh("git init -q", env, work)  # the Codex CLI runs in a project
    blocks = _first_run_blocks()
    assert [kind for kind, _ in blocks] == ["sh", "sh", "toml", "sh"], blocks
    assert "save this as `~/.codex/codexlb.config.toml`" in README.read_text()  # where the toml goes
    url = f"http://127.0.0.1:{port}"
    server = None
    try:
        for kind, body in blocks:
            body = body.replace("127.0.0.1:2455", f"127.0.0.1:{port}")
            if kind == "toml":
                (home / ".codex" / "codexlb.config.toml").write_text(body + "\n")
            elif shlex.split(body) == ["codexlb", "serve"]:
                server = await asyncio.create_subprocess_exec(*shlex.split(body), env=env, cwd=work,
                                                              stdout=asyncio.subprocess.DEVNULL,
                                                              stderr=asyncio.subprocess.DEVNULL)
                await _wait_live(url, server)
            else:
                output = await _sh(body, env, work)
        assert "You said: Say hello" in output
        # Step 5: the dashboard, with the account and the request just made.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/") as resp:
                assert resp.status == 200
            async with http.get(f"{url}/api/accounts") as resp:
                assert [a["email"] for a in (await resp.json())["accounts"]] == [sim.backend.accounts[0].email]
            async with http.get(f"{url}/metrics") as resp:
                counted = re.findall(r'^codexlb_requests_total\{[^}]*route="/backend-api/codex/responses"[^}]*'
                                     r'status="200"[^}]*\} ([0-9.]+)$', await resp.text(), re.M)
                assert counted and float(counted[0]) >= 1, "the Codex CLI's request was not counted"
    finally:
        if server is not None:
            server.terminate()
            await server.wait()
