"""A real `serve` in the test's loop, and the `codexlb` command run against it as a user would."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import asynccontextmanager
from typing import AsyncIterator

from aiohttp import web

from codexlb import server
from codexlb.config import Settings

# A test that stops a server with an answer still held open waits this long, not the product's 600 s default.
TEST_DRAIN_TIMEOUT_S = 30.0


@asynccontextmanager
async def serving(settings: Settings, app: web.Application) -> AsyncIterator[str]:
    """Serve `app` until the block ends (then SIGTERM, as an operator would); yields the port."""
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(server.serve(settings, app=app, on_listening=listening.set_result))
    url = await asyncio.wait_for(listening, 10)
    try:
        yield url.rsplit(":", 1)[1]
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 10)


def child_env(**extra: str) -> dict[str, str]:
    """This environment without the developer's CODEXLB_* settings, but with the test's database (the
    PostgreSQL one when the suite runs on that engine), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEXLB_") or k == "CODEXLB_DATABASE_URL"}
    return {**env, "CODEXLB_DRAIN_TIMEOUT_S": str(TEST_DRAIN_TIMEOUT_S), **extra}


async def codexlb(*args: str) -> tuple[int, str, str]:
    """`codexlb ARGS` as a subprocess (not blocking the loop that serves it); rc, stdout, stderr."""
    env = child_env()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "codexlb", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()
