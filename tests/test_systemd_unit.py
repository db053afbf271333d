"""The shipped systemd unit (build/codexlb.service): it verifies, and its commands do what it says when run by
hand as systemd would (systemd does not run here): `Type=notify` gets READY=1 from the server, and the
`ExecReload=` command hands the server over to a new process, which tells systemd its pid (MAINPID=)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from tests.pgserver import missing
from tests.serving import child_env

UNIT = Path(__file__).resolve().parents[1] / "build" / "codexlb.service"


def unit_line(key: str) -> str:
    [value] = re.findall(rf"^{key}=(.*)$", UNIT.read_text(), re.M)
    return value


def test_the_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze (Debian package systemd)")
    # The unit names the installed binary; here the package's own entry point stands in for it.
    entry = Path(sys.executable).with_name("codexlb")
    unit = tmp_path / "codexlb.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/codexlb", str(entry)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "codexlb.service" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert unit_line("Type") == "notify" and unit_line("NotifyAccess") == "all"


async def test_reload_hands_over_and_tells_systemd_the_new_main_pid(tmp_path):
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    loop = asyncio.get_running_loop()

    async def told() -> dict[str, str]:
        data = await asyncio.wait_for(loop.sock_recv(notify, 4096), 60)
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
        env=child_env(NOTIFY_SOCKET=str(notify_path)), stderr=asyncio.subprocess.DEVNULL)
    new_pid = None
    try:
        first = await told()
        assert first == {"MAINPID": str(serve.pid), "READY": "1"}, first
        # ExecReload=, with $MAINPID as systemd fills it in.
        reload = unit_line("ExecReload").replace("$MAINPID", first["MAINPID"]).split()
        assert subprocess.run(reload, timeout=10).returncode == 0
        second = await told()
        new_pid = int(second["MAINPID"])
        assert second["READY"] == "1" and new_pid != serve.pid
        assert await asyncio.wait_for(serve.wait(), 60) == 0  # the old one drained and stopped on its own
    finally:
        notify.close()
        if serve.returncode is None:
            serve.kill()
            await serve.wait()
        if new_pid is not None:
            subprocess.run(["kill", "-TERM", str(new_pid)], timeout=10)
            await _gone(new_pid)


async def _gone(pid: int) -> None:
    """Until process `pid` (not our child: the old server started it) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop, exited = asyncio.get_running_loop(), asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), 60)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
