"""`codexlb accounts …` as users run it: dedup, freshness, hostile files, and the running server."""

from __future__ import annotations

import dataclasses
import json
import time

import orjson
import pytest

from codexlb.cli import main
from codexlb.config import Settings
from codexlb.services import ROSTER
from codexlb.app import create_app
from codexlb.sim.accounts import make_jwt
from tests.serving import codexlb, serving

pytestmark = pytest.mark.usefixtures("clean_env")


def auth_file(path, account_id: str, exp: float, email: str = "a@example.test", refresh: str = "rt_x") -> str:
    claims = {"exp": int(exp), "https://api.openai.com/auth": {"chatgpt_account_id": account_id,
                                                               "chatgpt_plan_type": "plus"}}
    tokens = {"access_token": make_jwt(claims), "refresh_token": refresh,
              "id_token": make_jwt({**claims, "email": email}), "account_id": account_id}
    path.write_bytes(orjson.dumps({"OPENAI_API_KEY": None, "tokens": tokens, "last_refresh": "2026-01-01T00:00:00Z"}))
    return str(path)


def listed(capsys, data) -> list[dict]:
    capsys.readouterr()
    assert main(["accounts", "list", "--json", "--data-dir", str(data)]) == 0
    return json.loads(capsys.readouterr().out)["accounts"]


def test_import_dedupes_and_never_takes_a_staler_token(tmp_path, capsys):
    data = tmp_path / "d"
    now = time.time()
    fresh = auth_file(tmp_path / "fresh.json", "acct-1", now + 9000, refresh="rt_fresh")
    stale = auth_file(tmp_path / "stale.json", "acct-1", now + 100, refresh="rt_stale")
    other = auth_file(tmp_path / "other.json", "acct-2", now + 100, email="b@example.test")
    assert main(["accounts", "import", fresh, other, fresh, "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.count("added") == 2 and "kept" in out
    assert main(["accounts", "import", stale, "--data-dir", str(data)]) == 0
    assert "already present with fresher tokens; kept them" in capsys.readouterr().out
    accounts = listed(capsys, data)
    assert [a["id"] for a in accounts] == ["acct-1", "acct-2"]
    assert accounts[0]["access_expires_at"] == int(now + 9000)
    newer = auth_file(tmp_path / "newer.json", "acct-2", now + 20000, email="b@example.test")
    assert main(["accounts", "import", newer, "--data-dir", str(data)]) == 0
    assert "updated (fresher tokens)" in capsys.readouterr().out
    assert [a["alias"] for a in listed(capsys, data)] == ["a", "b"]


def hostile_files(tmp_path):
    good = auth_file(tmp_path / "good.json", "acct-9", time.time() + 9000)
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(open(good, "rb").read()[:60])
    wrong_types = tmp_path / "types.json"
    wrong_types.write_text('{"tokens": {"access_token": 5, "refresh_token": [], "id_token": {}}}')
    not_tokens = tmp_path / "list.json"
    not_tokens.write_text("[1, 2, 3]")
    bad_b64 = tmp_path / "b64.json"
    bad_b64.write_text('{"tokens": {"access_token": "eyJ.@@@not-base64@@@.sig", "refresh_token": "r", '
                       '"id_token": "x.y.z", "account_id": "acct-9"}}')
    huge = tmp_path / "huge.json"
    huge.write_bytes(b'{"tokens": {"access_token": "' + b"A" * (10 * 1024 * 1024) + b'"}}')
    return good, {
        truncated: "not valid JSON (truncated?)",
        wrong_types: "tokens.access_token is missing or not a string",
        not_tokens: 'no "tokens" object',
        bad_b64: "JWT payload is not base64url-encoded JSON",
        huge: "larger than 1024 KiB",
        tmp_path / "missing.json": "cannot read",
    }


def test_hostile_files_are_refused_with_one_line_and_change_nothing(tmp_path, capsys):
    data = tmp_path / "d"
    good, cases = hostile_files(tmp_path)
    for path, message in cases.items():
        assert main(["accounts", "import", good, str(path), "--data-dir", str(data)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("codexlb: error: ") and message in err, err
        assert listed(capsys, data) == []


def test_account_commands_reject_unknown_accounts(tmp_path, capsys):
    data = tmp_path / "d"
    assert main(["accounts", "pause", "nobody", "--data-dir", str(data)]) == 1
    assert "no account 'nobody'" in capsys.readouterr().err


async def test_commands_go_through_a_running_server(tmp_path, sim):
    """With a server up, the CLI's changes reach its in-memory pool at once."""
    data = tmp_path / "d"
    settings = dataclasses.replace(Settings(), data_dir=data, port=0, usage_poll_interval_s=0,
                                   upstream_base_url=sim.upstream_base_url, auth_base_url=sim.url)
    app = create_app(settings)
    path = tmp_path / "sim1.json"
    path.write_bytes(orjson.dumps(sim.backend.accounts[0].auth_json()))
    async with serving(settings, app) as port:
        async def cli(*args: str) -> tuple[int, str, str]:
            return await codexlb("accounts", *args, "--port", port, "--data-dir", str(data))

        rc, out, err = await cli("import", str(path))
        assert rc == 0, err
        assert [a.id for a in app[ROSTER].all()] == [sim.backend.accounts[0].account_id]
        rc, out, _ = await cli("pause", "sim1")
        assert rc == 0 and app[ROSTER].all()[0].status.value == "paused"
        rc, out, _ = await cli("list")
        assert "sim1" in out and "paused" in out
        rc, _, err = await cli("resume", "nobody")
        assert rc == 1 and "no account 'nobody'" in err
