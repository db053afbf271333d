"""`--help` that fits each command, and usage mistakes answered with that command's usage."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from codexlb.cli import build_parser
from tests.serving import child_env


def codexlb(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `codexlb` entry point, in an 80-column terminal's width, with no CODEXLB_* from the outside."""
    env = child_env()
    env["COLUMNS"] = "80"
    return subprocess.run([sys.executable, "-m", "codexlb", *args], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def _commands(parser=None, prefix=()):
    """Every command and action, as argv: ("serve",), ("accounts", "import"), ..."""
    parser = parser or build_parser()
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, sub in action.choices.items():
            yield (*prefix, name)
            yield from _commands(sub, (*prefix, name))


COMMANDS = list(_commands())


def test_every_command_is_listed():
    assert {("serve",), ("accounts", "import"), ("keys", "create"), ("config", "show")} <= set(COMMANDS)


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_fits_and_shows_one_default_per_option(argv):
    done = codexlb(*argv, "--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if argv != ("serve",):
        assert len(lines) < 60, f"{' '.join(argv)} --help: {len(lines)} lines"
    text = re.sub(r"\s+", " ", done.stdout)
    # One option's help is the text between its flag and the next; none may say its default twice.
    for entry in re.split(r" (?=--?[a-z])", text):
        assert entry.count("(default:") <= 1, entry
        assert "(default: ;" not in entry and "(default: )" not in entry, entry


def test_serve_help_groups_settings_by_section_with_one_default_each():
    out = codexlb("serve", "--help").stdout
    titles = [line[:-1] for line in out.splitlines() if re.fullmatch(r"[a-z][a-z ]*:", line)]
    for section in ("listening", "upstream", "pool", "admission", "bridge", "storage", "logging"):
        assert section in titles, titles
    assert out.count("(default:") >= 36


def test_admin_commands_show_where_the_data_and_server_are_not_every_serve_setting():
    out = codexlb("keys", "create", "--help").stdout
    assert "--data-dir" in out and "--port" in out
    assert "--strategy" not in out and "--transcript-max-mb" not in out


def test_a_missing_argument_prints_a_short_usage_and_the_error():
    done = codexlb("accounts", "import")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) <= 4, done.stderr
    assert lines[0].startswith("usage: codexlb accounts import")
    assert any("required: PATH" in line for line in lines)


def test_a_wrong_flag_shows_the_commands_usage_and_the_nearest_option():
    done = codexlb("serve", "--prot", "1")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: codexlb serve"), done.stderr
    assert "did you mean --port?" in done.stderr
    assert len(done.stderr.splitlines()) <= 4, done.stderr
