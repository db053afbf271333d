"""What the subcommands share: setting flags derived from `Settings`, error reporting, and time for people."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import time
from pathlib import Path
from typing import Any, Collection, Coroutine, Iterable, Iterator, NoReturn, Sequence

from codexlb import config, server, server_record


class CliError(Exception):
    """Ends the command with one `codexlb: error: ...` line and `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps hand-written examples as they are, shows each default once, and a usage line that fits:
    `[options]` for the options, which the help lists anyway."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # A help that names its own default, an unset default, or a flag's off state needs no "(default: …)".
        if "(default" in (action.help or "") or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)

    def _format_usage(self, usage: str | None, actions: Iterable[argparse.Action],
                      groups: Iterable[argparse._MutuallyExclusiveGroup], prefix: str | None) -> str:
        if usage is None:
            actions = list(actions)
            words = ["%(prog)s"] + ["[options]"] * any(a.option_strings for a in actions) + [
                self._format_args(a, self._get_default_metavar_for_positional(a))
                for a in actions if not a.option_strings]
            usage = " ".join(words)
        return super()._format_usage(usage, actions, groups, prefix)


class Parser(argparse.ArgumentParser):
    """A command's parser: a mistake shows that command's usage, the nearest option for a mistyped one,
    and where the help is."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        # Left to the top level, a command's unknown option is reported under the top level's usage.
        if extras and self._subparsers is None:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggestion(extras)}")
        return namespace, extras

    def _suggestion(self, extras: list[str]) -> str:
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        for word in extras:
            if word.startswith("--"):
                near = difflib.get_close_matches(word.partition("=")[0], known, n=1)
                if near:
                    return f"; did you mean {near[0]}?"
        return ""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\nSee `{self.prog} --help`.\n")


def _default_text(f: dataclasses.Field) -> str:
    kind = config.type_of(f.name)
    if kind is tuple:
        return ",".join(f.default) or "none"
    if kind is bool:
        return str(f.default).lower()
    return "unset" if f.default is None else str(f.default) or "empty"


def _add_flag(group: argparse._ArgumentGroup, f: dataclasses.Field, shown: bool) -> None:
    choices = f.metadata["choices"]
    metavar = f.metadata["metavar"] or ("{" + ",".join(choices) + "}" if choices else f.name.upper())
    extra: dict[str, Any] = {}
    if config.type_of(f.name) is bool:
        # A bare `--allow-unauthenticated` means true; `--allow-unauthenticated false` still works.
        metavar, extra = "BOOL", {"nargs": "?", "const": "true"}
    text = f.metadata["help"]
    if "(default" not in text:
        text = f"{text} (default: {_default_text(f)})"
    group.add_argument(
        config.flag_name(f.name), dest=f"setting_{f.name}", metavar=metavar, default=argparse.SUPPRESS,
        help=text if shown else argparse.SUPPRESS, **extra,
    )


def add_setting_flags(parser: argparse.ArgumentParser, shown: Collection[str] | None = None, *,
                      title: str = "settings", about: str = "", accept_all: bool = False) -> None:
    """Flags for settings, each defaulting to 'not given' so the lower layers show through.

    Every setting, grouped by section (`shown` None: `serve`); or just `shown`, in one group under `title`
    (`about` says what they are for), and with `accept_all` the others taken too but not listed.
    """
    where = ("Each setting also reads CODEXLB_<NAME> and the key <name> in the config\n"
             "file; flags win over the environment, which wins over the file.")
    if accept_all:
        where += "\nEvery `codexlb serve` setting flag is taken too (see `codexlb serve --help`)."
    first = parser.add_argument_group(title if shown is not None else "where settings come from",
                                      f"{about}\n{where}" if about else where)
    first.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS,
        help="TOML config file (default: <data-dir>/config.toml; env CODEXLB_CONFIG)",
    )
    if shown is None:
        groups = {name: parser.add_argument_group(name, about) for name, about in config.SECTIONS.items()}
        for f in config.FIELDS:
            _add_flag(groups[f.metadata["section"]], f, shown=True)
        return
    for f in config.FIELDS:
        if f.name in shown or accept_all:
            _add_flag(first, f, shown=f.name in shown)


def add_server_flags(parser: argparse.ArgumentParser, *more: str) -> None:
    """The admin commands' (accounts, keys, admin) setting flags: where the data dir is and where its server
    listens, and `more` the command also reads."""
    add_setting_flags(
        parser, ("data_dir", "host", "port", "secret_key_file", *more), title="data dir and server",
        about="The data dir, and where its server listens: a command goes through the running\n"
        "server, so the change reaches it at once; with none running, to the data dir.",
    )


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The setting flags given on the command line, by setting name."""
    return {f.name: getattr(args, f"setting_{f.name}") for f in config.FIELDS if hasattr(args, f"setting_{f.name}")}


def load_settings(args: argparse.Namespace) -> config.Loaded:
    flags = setting_flags(args)
    try:
        return config.load(flags=flags, config_path=getattr(args, "config", None))
    except config.ConfigError as exc:
        raise CliError(str(exc)) from None


def signal_server(data_dir: Path, sig: int) -> tuple[int, float]:
    """Send `sig` to the server holding `data_dir`: its pid, and when it was sent (for its record's answer)."""
    held = server_record.holder(data_dir)
    if held is None or held.pid is None:
        raise CliError(f"no codexlb server runs on data dir {data_dir}: start one with `codexlb serve`", 1)
    sent_at = time.time()
    try:
        os.kill(held.pid, sig)
    except OSError as exc:
        raise CliError(f"cannot signal the server (pid {held.pid}): {exc.strerror or exc}", 1) from None
    return held.pid, sent_at


def records(data_dir: Path, wait_s: float, poll_s: float = 0.05) -> Iterator[server_record.Holder | None]:
    """The data dir's server record, read again every `poll_s` for `wait_s`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        yield server_record.holder(data_dir)
        time.sleep(poll_s)


def ago(ts: float | None, now: float) -> str:
    """`5m ago`, `in 2h`, or `-` for never."""
    if not ts:
        return "-"
    seconds = int(now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size}{unit} ago" if seconds >= 0 else f"in {-seconds // size}{unit}"
    return f"{seconds}s ago" if seconds >= 0 else f"in {-seconds}s"


def run_server(main: Coroutine[Any, Any, int | None]) -> int:
    """Run a serving coroutine as the command's body; a start-up failure is one line, exit 1."""
    try:
        return server.run_until_stopped(main)
    except server.StartupError as exc:
        raise CliError(str(exc), exit_code=1) from None
