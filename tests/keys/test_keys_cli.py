"""`codexlb keys …` as users run it: on the data dir, and through a running server."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import aiohttp
import pytest

from codexlb import log
from codexlb.cli import main
from codexlb.config import Settings
from codexlb.services import KEYS
from tests.keys.conftest import keyed_app
from tests.serving import codexlb, serving

pytestmark = pytest.mark.usefixtures("clean_env")
KEY = re.compile(r"sk-clb-[A-Za-z0-9_-]{43}")


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(list(args))
    finally:
        # The command logs to the stderr capsys lends it, which is closed after the test: later tests' lines
        # (an error middleware's, say) would fail on it.
        out, err = capsys.readouterr()
        log.configure("info", "json", io.StringIO())
    return rc, out, err


def test_create_shows_the_key_once_and_nothing_keeps_it(capsys, tmp_path):
    data = str(tmp_path / "d")
    rc, out, err = run(capsys, "keys", "create", "--name", "laptop", "--max-concurrency", "2", "--data-dir", data)
    assert rc == 0 and err == ""
    keys = KEY.findall(out)
    assert len(keys) == 1
    key = keys[0]
    assert "cannot be shown again" in out and "Authorization: Bearer <key>" in out and "OPENAI_BASE_URL" in out

    rc, listed, _ = run(capsys, "keys", "list", "--data-dir", data)
    assert rc == 0 and "laptop" in listed and key[:11] in listed and "active" in listed
    assert key not in listed and key[11:] not in listed
    rc, as_json, _ = run(capsys, "keys", "list", "--json", "--data-dir", data)
    [view] = json.loads(as_json)["keys"]
    assert view["name"] == "laptop" and view["max_concurrency"] == 2 and key not in as_json
    for path in (tmp_path / "d").iterdir():
        assert key[11:].encode() not in path.read_bytes(), path

    rc, out, _ = run(capsys, "keys", "revoke", "laptop", "--data-dir", data)
    assert rc == 0 and out == f"Revoked API key 'laptop' ({view['id']}).\n"
    rc, listed, _ = run(capsys, "keys", "list", "--data-dir", data)
    assert "revoked" in listed
    rc, _, err = run(capsys, "keys", "revoke", "laptop", "--data-dir", data)
    assert rc == 1 and err.startswith("codexlb: error: API key 'laptop'") and "already revoked" in err
    rc, _, err = run(capsys, "keys", "revoke", "nobody", "--data-dir", data)
    assert rc == 1 and err == "codexlb: error: no API key 'nobody' (see `codexlb keys list`)\n"


def test_list_when_empty_and_bad_input(capsys, tmp_path):
    data = str(tmp_path / "d")
    rc, out, _ = run(capsys, "keys", "list", "--data-dir", data)
    assert rc == 0 and "No API keys yet" in out
    rc, _, err = run(capsys, "keys", "create", "--name", "a b", "--data-dir", data)
    assert rc == 1 and "must be 1-64" in err
    rc, _, err = run(capsys, "keys", "create", "--max-concurrency", "0", "--data-dir", data)
    assert rc == 1 and "must be at least 1" in err
    rc, out, _ = run(capsys, "keys", "create", "--json", "--data-dir", data)
    created = json.loads(out)
    assert KEY.fullmatch(created["key"]) and created["api_key"]["name"] == "key-1"


@pytest.mark.parametrize("argv", [["keys"], ["keys", "create"], ["keys", "list"], ["keys", "revoke"],
                                  ["keys", "update"]])
def test_help_has_examples(capsys, argv):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    assert "examples:\n  codexlb keys create" in capsys.readouterr().out


async def test_commands_go_through_a_running_server_and_act_at_once(tmp_path):
    """With a server up, a key made or revoked by the CLI works, or stops working, on the next request."""
    data = tmp_path / "d"
    settings = dataclasses.replace(Settings(), data_dir=data, port=0, usage_poll_interval_s=0,
                                   upstream_base_url="http://127.0.0.1:9", auth_base_url="http://127.0.0.1:9")
    stream = io.StringIO()
    log.configure("debug", "json", stream)
    app = keyed_app(settings)
    try:
        async with serving(settings, app) as port, aiohttp.ClientSession() as http:
            async def cli(*args: str) -> tuple[int, str, str]:
                return await codexlb("keys", *args, "--port", port, "--data-dir", str(data))

            async def whoami(key: str | None) -> int:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                async with http.get(f"http://127.0.0.1:{port}/v1/__whoami", headers=headers) as resp:
                    return resp.status

            assert await whoami(None) == 200  # no key yet: this machine is served
            rc, out, err = await cli("create", "--name", "ci")
            assert rc == 0, err
            [key] = KEY.findall(out)
            assert app[KEYS].has_keys  # the server's ring, not just the file
            assert await whoami(key) == 200 and await whoami(None) == 401
            rc, out, err = await cli("update", "ci", "--rpm", "5", "--models", "gpt-5*", "--note", "CI runners")
            assert rc == 0 and "gpt-5*" in out and "CI runners" in out, err
            live = app[KEYS].verify(key)
            assert live is not None and live.rpm == 5 and live.models == ("gpt-5*",)  # the server's, at once
            rc, out, err = await cli("update", "ci", "--rpm", "-5")
            assert rc == 1 and "at least 1" in err and live.rpm == 5
            rc, out, err = await cli("create", "--name", "laptop")
            [other] = KEY.findall(out)
            rc, out, _ = await cli("list")
            assert rc == 0 and "ci" in out and "laptop" in out and key not in out and other not in out
            rc, _, err = await cli("revoke", "ci")
            assert rc == 0, err
            assert await whoami(key) == 401 and await whoami(other) == 200
            rc, _, err = await cli("revoke", "ci")
            assert rc == 1 and "already revoked" in err
    finally:
        log.configure("info", "json", io.StringIO())
    text = stream.getvalue()
    assert "api key created" in text and "api key revoked" in text and "api key updated" in text
    assert "CI runners" not in text  # a note is the operator's text, not the log's
    for secret in (key, other):
        assert secret[11:] not in text


def test_limits_are_set_shown_and_cleared_on_the_data_dir(capsys, tmp_path):
    data = str(tmp_path / "d")
    rc, out, err = run(capsys, "keys", "create", "--name", "ci", "--rpm", "60", "--tokens-day", "2000000",
                       "--data-dir", data)
    assert rc == 0, err
    rc, out, err = run(capsys, "keys", "update", "ci", "--models", "gpt-5*,o4-mini", "--tokens-week", "none",
                       "--expires", "2999-01-01T00:00:00Z", "--note", "nightly builds", "--data-dir", data)
    assert rc == 0, err
    rc, listed, _ = run(capsys, "keys", "list", "--data-dir", data)
    header, row = listed.splitlines()[:2]
    for column in ("RPM", "TOKENS 5H", "TOKENS DAY", "TOKENS WEEK", "MODELS", "EXPIRES"):
        assert column in header
    assert "0/60" in row and "0/2M" in row and "gpt-5*,o4-mini" in row and "2999-01-01 00:00Z" in row
    assert "ci: nightly builds" in listed
    rc, as_json, _ = run(capsys, "keys", "list", "--json", "--data-dir", data)
    [view] = json.loads(as_json)["keys"]
    assert view["rpm"] == 60 and view["tokens_day"] == 2_000_000 and view["tokens_week"] is None
    assert view["models"] == ["gpt-5*", "o4-mini"] and view["use"]["rpm"]["used"] == 0
    rc, _, err = run(capsys, "keys", "update", "ci", "--rpm", "none", "--data-dir", data)
    assert rc == 0, err
    rc, as_json, _ = run(capsys, "keys", "list", "--json", "--data-dir", data)
    assert json.loads(as_json)["keys"][0]["rpm"] is None


@pytest.mark.parametrize(("args", "message"), [
    (["--rpm", "ten"], "whole number"),
    (["--tokens-5h", "-3"], "at least 1"),
    (["--tokens-day", str(10**12 + 1)], "more than"),
    (["--models", "gpt-[5"], "unbalanced brackets"),
    (["--expires", "2001-01-01"], "in the past"),
    ([], "nothing to change"),
])
def test_bad_updates_are_one_line_and_change_nothing(capsys, tmp_path, args, message):
    data = str(tmp_path / "d")
    run(capsys, "keys", "create", "--name", "ci", "--rpm", "7", "--data-dir", data)
    rc, out, err = run(capsys, "keys", "update", "ci", *args, "--data-dir", data)
    assert rc in (1, 2) and message in err and err.count("\n") == 1, err
    rc, as_json, _ = run(capsys, "keys", "list", "--json", "--data-dir", data)
    view = json.loads(as_json)["keys"][0]
    assert (view["rpm"], view["tokens_5h"], view["tokens_day"], view["models"], view["expires_at"]) == (
        7, None, None, None, None)
