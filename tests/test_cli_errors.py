"""Errors a new operator meets first, each saying what is wrong and what to do instead."""

from __future__ import annotations

import socket
import time

from tests.accounts.test_import_cli import auth_file
from tests.test_cli_help import codexlb


def test_a_bad_listen_address_is_reported_before_the_no_key_rule(tmp_path):
    done = codexlb("serve", "--host", "999.1.1.1", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert "999.1.1.1" in done.stderr and "API key" not in done.stderr, done.stderr
    assert "host" in done.stderr


def test_a_port_in_use_is_one_line_that_names_the_address_and_the_way_out(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = codexlb("serve", "--port", str(port), "--data-dir", str(tmp_path / "d"), "--log-level", "error")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    line = done.stderr
    assert f"127.0.0.1:{port}" in line and "--port" in line
    assert line.count(str(port)) == 1 and line.lower().count("in use") == 1, line


def test_importing_a_file_that_is_not_json_says_an_auth_json_was_expected(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# codexlb\n\nLoad balancer.\n")
    done = codexlb("accounts", "import", str(readme), "--data-dir", str(tmp_path / "d"), "--port", "9")
    assert done.returncode == 1
    assert "not an auth.json" in done.stderr and "truncated" not in done.stderr, done.stderr


def test_importing_a_directory_uses_the_auth_json_in_it_or_says_to_give_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = codexlb("accounts", "import", str(empty), "--data-dir", str(tmp_path / "d"), "--port", "9")
    assert done.returncode == 1
    assert "Is a directory" not in done.stderr and "auth.json" in done.stderr, done.stderr
    home = tmp_path / "home"
    home.mkdir()
    (home / "auth.json").write_text("{")
    done = codexlb("accounts", "import", str(home), "--data-dir", str(tmp_path / "d"), "--port", "9")
    # The file inside was read: its own fault is reported, under its own name.
    assert str(home / "auth.json") in done.stderr and "not valid JSON" in done.stderr, done.stderr
    auth_file(home / "auth.json", "acct-7", time.time() + 9000)
    done = codexlb("accounts", "import", str(home), "--data-dir", str(tmp_path / "d"), "--port", "9")
    assert done.returncode == 0 and "added" in done.stdout, done.stderr
