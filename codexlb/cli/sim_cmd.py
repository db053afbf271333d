"""`codexlb sim`: run the simulated ChatGPT backend."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import orjson

from codexlb import log, server
from codexlb.cli.common import CliError, HelpFormatter, run_server
from codexlb.config import Settings
from codexlb.sim.app import create_sim_app
from codexlb.server import heap
from codexlb.sim.backend import Backend, SimConfig

_DEFAULTS = SimConfig()
_EPILOG = """\
examples:
  codexlb sim --port 2456 --accounts 3
  codexlb sim --port 2456 --write-auth /tmp/sim-auth    # then: codexlb accounts import /tmp/sim-auth/*/auth.json
  codexlb serve --upstream-base-url http://127.0.0.1:2456/backend-api --auth-base-url http://127.0.0.1:2456

Point the Codex CLI straight at it with a custom provider whose base_url is
http://127.0.0.1:2456/backend-api/codex and CODEX_HOME=<write-auth dir>/<account id>.

What the simulated model does: a user message containing `call:NAME {json}`
gets a function call to NAME; a request with "generate": false gets an empty
prewarm response; anything else gets a short assistant message. Faults are
scripted at run time with POST /__sim/faults (see codexlb/sim/control.py), e.g.
  curl -XPOST localhost:2456/__sim/faults -d '{"action":"close","transport":"ws","after_events":3}'
"""


def _write_auth(directory: Path, backend: Backend) -> list[Path]:
    written = []
    for account in backend.accounts:
        home = directory / account.account_id
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = home / "auth.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(account.auth_json(), option=orjson.OPT_INDENT_2))
        written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    if args.accounts < 1:
        raise CliError("--accounts must be at least 1")
    if not 0 <= args.port <= 65535:
        raise CliError("--port must be between 0 and 65535")
    log.configure(args.log_level, args.log_format)
    config = SimConfig(
        accounts=args.accounts, token_ttl_s=args.token_ttl_s, state_ttl_s=args.state_ttl_s,
        primary_limit_tokens=args.primary_limit_tokens, secondary_limit_tokens=args.secondary_limit_tokens,
        reply_words=args.reply_words, seed=args.seed,
    )
    backend = Backend(config)
    logger = log.get("codexlb.sim")
    if args.write_auth:
        try:
            paths = _write_auth(Path(args.write_auth).expanduser(), backend)
        except OSError as exc:
            raise CliError(f"cannot write auth files to {args.write_auth}: {exc.strerror}", exit_code=1) from None
        logger.info("wrote auth.json files", count=len(paths), directory=str(Path(args.write_auth).expanduser()))
    settings = dataclasses.replace(Settings(), host=args.host, port=args.port, drain_timeout_s=1.0)
    logger.info("simulated accounts", accounts=[a.account_id for a in backend.accounts])
    heap.settle()  # as serve's: a benchmark's direct figures must not be the sim's collector pauses
    return run_server(server.serve(settings, create_sim_app(backend), hold_data_dir=False))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sim",
        help="run the simulated ChatGPT backend (for trying codexlb, tests and benchmarks)",
        description="Run a simulated ChatGPT Codex backend: Responses over SSE and WebSocket, conversation "
        "state, accounts with expiring tokens and usage windows, and scriptable faults.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=2456, help="port to listen on (0 picks a free one)")
    parser.add_argument("--accounts", type=int, default=3, metavar="N", help="number of simulated accounts")
    parser.add_argument("--write-auth", metavar="DIR",
                        help="write DIR/<account id>/auth.json (Codex CLI format) for every account at start")
    parser.add_argument("--token-ttl-s", type=float, default=_DEFAULTS.token_ttl_s, metavar="SECONDS",
                        help="lifetime of issued access tokens")
    parser.add_argument("--state-ttl-s", type=float, default=_DEFAULTS.state_ttl_s, metavar="SECONDS",
                        help="how long a response can be continued with previous_response_id")
    parser.add_argument("--primary-limit-tokens", type=int, default=_DEFAULTS.primary_limit_tokens, metavar="N",
                        help="tokens per account in the 5-hour window before usage_limit_reached")
    parser.add_argument("--secondary-limit-tokens", type=int, default=_DEFAULTS.secondary_limit_tokens,
                        metavar="N", help="tokens per account in the weekly window")
    parser.add_argument("--reply-words", type=int, default=_DEFAULTS.reply_words, metavar="N",
                        help="pad assistant replies to at least N words (one delta event each)")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed for faults that fire on a share")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", default="auto", choices=("auto", "console", "json"))
    parser.set_defaults(run=run)
