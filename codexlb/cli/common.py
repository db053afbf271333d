"""What the subcommands share: setting flags derived from `Settings`, error reporting, and time for people."""

from __future__ import annotations

import argparse
from typing import Any, Coroutine

from codexlb import config, server


class CliError(Exception):
    """Ends the command with one `codexlb: error: ...` line and `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps hand-written examples as they are and shows each default."""


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; each defaults to 'not given' so the lower layers show through."""
    group = parser.add_argument_group(
        "settings", "Each also reads CODEXLB_<NAME> and the key <name> in the config file."
    )
    group.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS,
        help="TOML config file (default: <data-dir>/config.toml; env CODEXLB_CONFIG)",
    )
    for f in config.FIELDS:
        choices = f.metadata["choices"]
        metavar = f.metadata["metavar"] or ("{" + ",".join(choices) + "}" if choices else f.name.upper())
        default = f.default
        extra: dict[str, str] = {}
        if config.type_of(f.name) is tuple:
            default = ",".join(f.default) or "none"
        if config.type_of(f.name) is bool:
            # A bare `--allow-unauthenticated` means true; `--allow-unauthenticated false` still works.
            metavar, default, extra = "BOOL", str(f.default).lower(), {"nargs": "?", "const": "true"}
        group.add_argument(
            config.flag_name(f.name),
            dest=f"setting_{f.name}",
            metavar=metavar,
            default=argparse.SUPPRESS,
            help=f"{f.metadata['help']} (default: {default}; env {config.env_name(f.name)})",
            **extra,
        )


def load_settings(args: argparse.Namespace) -> config.Loaded:
    flags = {
        f.name: getattr(args, f"setting_{f.name}") for f in config.FIELDS if hasattr(args, f"setting_{f.name}")
    }
    try:
        return config.load(flags=flags, config_path=getattr(args, "config", None))
    except config.ConfigError as exc:
        raise CliError(str(exc)) from None


def ago(ts: float | None, now: float) -> str:
    """`5m ago`, `in 2h`, or `-` for never."""
    if not ts:
        return "-"
    seconds = int(now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size}{unit} ago" if seconds >= 0 else f"in {-seconds // size}{unit}"
    return f"{seconds}s ago" if seconds >= 0 else f"in {-seconds}s"


def run_server(main: Coroutine[Any, Any, None]) -> int:
    """Run a serving coroutine as the command's body; a start-up failure is one line, exit 1."""
    try:
        return server.run_until_stopped(main)
    except server.StartupError as exc:
        raise CliError(str(exc), exit_code=1) from None
