"""Every level of `codexlb --help` explains itself with examples."""

from __future__ import annotations

import pytest

from codexlb import __version__
from codexlb.cli import main


@pytest.mark.parametrize("argv", [[], ["serve"], ["sim"], ["config"], ["config", "show"], ["version"]])
def test_help_has_a_description_and_examples(capsys, argv):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: codexlb")
    assert "examples:\n  codexlb" in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"codexlb {__version__}\n"
    assert main(["version", "--verbose"]) == 0
    assert "aiohttp" in capsys.readouterr().out
