"""`codexlb config show`: the effective settings, secrets masked, with their sources."""

from __future__ import annotations

import argparse
import json
import sys

import orjson

from codexlb import config
from codexlb.cli.common import HelpFormatter, add_setting_flags, load_settings

_EPILOG = """\
examples:
  codexlb config show
  codexlb config show --json
  CODEXLB_PORT=8080 codexlb config show --host 0.0.0.0

The TOML output can be saved as <data-dir>/config.toml and edited.
"""


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # A JSON string is a valid TOML basic string.
    return json.dumps(str(value))


def show(args: argparse.Namespace) -> int:
    loaded = load_settings(args)
    view = config.public_view(loaded.settings)
    if args.json:
        out = {
            "config_file": str(loaded.config_file) if loaded.config_file else None,
            "settings": view,
            "sources": loaded.sources,
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    source_file = loaded.config_file or "none"
    lines = [f"# codexlb effective configuration (config file: {source_file})"]
    for name, value in view.items():
        if value is None:
            # TOML has no null: an unset setting is shown as a comment.
            lines.append(f"# {name} is unset  # {loaded.sources[name]}")
        else:
            lines.append(f"{name} = {_toml_value(value)}  # {loaded.sources[name]}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "config", help="inspect the configuration", description="Inspect the configuration.",
        epilog="examples:\n  codexlb config show\n  codexlb config show --json --port 8080\n",
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    show_parser = actions.add_parser(
        "show",
        help="print the effective settings and where each came from",
        description="Print the effective settings (defaults < config file < CODEXLB_* environment < "
        "flags), secrets masked, each with its source.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    show_parser.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    add_setting_flags(show_parser, ("data_dir",), accept_all=True)
    show_parser.set_defaults(run=show)
