"""`codexlb demo`: the whole thing on one machine with no ChatGPT account — the simulated backend with
a few accounts, imported into a throw-away data dir, behind a real codexlb."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

from aiohttp import web

from codexlb import log, server
from codexlb.app import create_app
from codexlb.auth.authjson import from_tokens
from codexlb.cli.common import CliError, HelpFormatter, run_server
from codexlb.config import Settings
from codexlb.services import ROSTER
from codexlb.sim.backend import SimConfig
from codexlb.sim.running import running_sim

_EPILOG = """\
examples:
  codexlb demo
  codexlb demo --port 8080 --accounts 5

Everything lives in a temporary data dir that is removed on exit. Faults can be
injected into the simulated backend while it runs (see `codexlb sim --help`).
"""


def instructions(url: str, sim_url: str) -> str:
    return f"""
codexlb demo is running: proxy {url}, simulated ChatGPT backend {sim_url}

Dashboard (accounts, requests, usage, API keys): {url}/

Codex CLI, with a throw-away CODEX_HOME (your ~/.codex is not touched):

  CODEX_HOME=$(mktemp -d) CODEXLB_KEY=anything codex \\
    -c model_provider=codexlb -c model=gpt-5.5 \\
    -c 'model_providers.codexlb={{name="codexlb", base_url="{url}/backend-api/codex", wire_api="responses", env_key="CODEXLB_KEY"}}'

To use codexlb for real, add it as a profile (README: First real run).

curl:

  curl -N {url}/v1/responses -H 'Content-Type: application/json' \\
    -d '{{"model": "gpt-5.5", "input": "hello", "stream": true}}'

OpenAI SDK (Python):

  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="anything")
  print(client.responses.create(model="gpt-5.5", input="hello").output_text)

Ctrl-C stops it.
"""


async def demo(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="codexlb-demo-"))
    try:
        async with running_sim(SimConfig(accounts=args.accounts)) as sim:
            settings = dataclasses.replace(
                Settings(), host=args.host, port=args.port, data_dir=data_dir,
                upstream_base_url=sim.upstream_base_url, auth_base_url=sim.url, drain_timeout_s=2.0,
            )
            app = create_app(settings)

            async def import_sim_accounts(app: web.Application) -> None:
                for account in sim.backend.accounts:
                    await app[ROSTER].add_login(from_tokens(
                        account.access_token, account.refresh_token, account.id_token,
                        account_id=account.account_id, issued_at=0, origin="demo"))

            # Appended after create_app: runs once the store and roster are up.
            app.on_startup.append(import_sim_accounts)
            await server.serve(settings, app, on_listening=lambda url: print(instructions(url, sim.url), flush=True))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    if args.accounts < 1:
        raise CliError("--accounts must be at least 1")
    log.configure(args.log_level, args.log_format)
    return run_server(demo(args))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo", help="try codexlb with simulated accounts (no ChatGPT account needed)",
        description="Run codexlb in front of the simulated ChatGPT backend with a few accounts, in a "
        "throw-away data dir, and print how to point the Codex CLI, curl or the OpenAI SDK at it.",
        epilog=_EPILOG, formatter_class=HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the proxy listens on")
    parser.add_argument("--port", type=int, default=2455, help="port the proxy listens on (0 picks a free one)")
    parser.add_argument("--accounts", type=int, default=3, metavar="N", help="simulated accounts in the pool")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", default="auto", choices=("auto", "console", "json"))
    parser.set_defaults(run=run)
