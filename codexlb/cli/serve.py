"""`codexlb serve`: run the proxy."""

from __future__ import annotations

import argparse
import functools
import signal
import socket

from aiohttp import web

from codexlb import config, log, reconfigure, server
from codexlb.app import create_app
from codexlb.cli.common import CliError, HelpFormatter, add_setting_flags, load_settings, run_server
from codexlb.server import handover, heap, open_files, workers
from codexlb.server.reloading import Reloader

_EPILOG = """\
examples:
  codexlb serve
  codexlb serve --host 0.0.0.0 --port 8080
  CODEXLB_LOG_FORMAT=json codexlb serve --data-dir /var/lib/codexlb

  codexlb serve --workers 4             four processes sharing the port

SIGTERM or SIGINT stops accepting connections and gives in-flight requests
--drain-timeout-s seconds to finish; a second signal stops at once.
SIGUSR2 (or `codexlb upgrade`) starts the program at its path again and hands
it the listening socket: once the new process is ready, this one stops
accepting and drains; if it cannot start, this one goes on serving.
SIGHUP (or `codexlb reload`) reads the config file again and applies the
settings that can change in place (log level, limits, timeouts, strategy)
and reads accounts and API keys again; the others need `codexlb upgrade`.
"""


def run(args: argparse.Namespace) -> int:
    if args.handover_fds is None:
        return _run(args, None)
    # Started by `serve` to take over from it: whatever stops this start is told to that process too.
    inherited = handover.Inherited.parse(args.handover_fds)
    try:
        return _run(args, inherited)
    except CliError as exc:
        inherited.failed(str(exc))
        raise


def _run(args: argparse.Namespace, inherited: handover.Inherited | None) -> int:
    # A reload asked for while this process starts (a worker the parent passes SIGHUP on to) finds it reading
    # the settings anyway: ignored, not the default that ends the process, until serving handles it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    loaded = load_settings(args)
    settings = loaded.settings
    log.configure(settings.log_level, settings.log_format)
    if args.worker_fd is None:  # workers inherit the supervisor's limit
        open_files.check(open_files.raise_limit(), settings)
    heap.settle()  # in the command only: tests serve in their own process, which must stay as it is
    if args.worker_fd is not None:
        return run_server(_work(loaded, args))
    if settings.workers > 1:
        return run_server(workers.supervise(settings, _same_flags(args), Reloader(loaded), inherited))
    app = create_app(settings)
    return run_server(server.serve(settings, app, inherited=inherited, reloader=_reloader(loaded, app)))


def _reloader(loaded: config.Loaded, app: web.Application) -> Reloader:
    return Reloader(loaded, functools.partial(reconfigure.apply, app))


async def _work(loaded: config.Loaded, args: argparse.Namespace) -> None:
    """One of `--workers N`: serve the parent's socket; the parent holds the data dir."""
    log.set_worker(args.worker_number)
    workers.watch_parent(args.worker_parent_fd)
    sock = socket.socket(fileno=args.worker_fd)
    app = create_app(loaded.settings)
    await server.serve(loaded.settings, app, on_listening=lambda _url: workers.tell_ready(args.worker_ready_fd),
                       hold_data_dir=False, sock=sock, reloader=_reloader(loaded, app))


def _same_flags(args: argparse.Namespace) -> list[str]:
    """The command line a worker gets: `serve` and the setting flags given (the environment it inherits)."""
    flags = ["serve"]
    if hasattr(args, "config"):
        flags.append(f"--config={args.config}")
    for f in config.FIELDS:
        if hasattr(args, f"setting_{f.name}"):
            flags.append(f"{config.flag_name(f.name)}={getattr(args, f'setting_{f.name}')}")
    return flags


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the proxy",
        description="Run the codexlb proxy in the foreground until SIGTERM or SIGINT.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_setting_flags(parser)
    # Internal: how the parent of `--workers N` starts a worker (the socket, its number, where to say ready).
    for name in ("--worker-fd", "--worker-number", "--worker-ready-fd", "--worker-parent-fd"):
        parser.add_argument(name, type=int, default=None, help=argparse.SUPPRESS)
    # Internal: how `serve` starts the process it hands over to (`server/handover.py`).
    parser.add_argument(handover.FLAG, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)
