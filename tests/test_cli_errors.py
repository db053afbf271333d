"""Errors a new operator meets first, each saying what is wrong and what to do instead."""

from __future__ import annotations

from tests.test_cli_help import codexlb


def test_a_bad_listen_address_is_reported_before_the_no_key_rule(tmp_path):
    done = codexlb("serve", "--host", "999.1.1.1", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert "999.1.1.1" in done.stderr and "API key" not in done.stderr, done.stderr
    assert "host" in done.stderr
