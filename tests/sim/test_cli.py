"""`codexlb sim` as a user runs it: a real process, auth files, SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request


def claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_sim_writes_codex_auth_files_and_serves(tmp_path):
    auth_dir = tmp_path / "auth"
    proc = subprocess.Popen(
        [sys.executable, "-m", "codexlb", "sim", "--port", "0", "--accounts", "2", "--write-auth", str(auth_dir),
         "--log-format", "json"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "HOME": str(tmp_path)},
    )
    try:
        events = {}
        while "listening" not in events:
            line = json.loads(proc.stderr.readline())
            events[line["event"]] = line
        assert events["simulated accounts"]["accounts"] == ["acct-sim-01", "acct-sim-02"]
        files = sorted(auth_dir.glob("*/auth.json"))
        assert [f.parent.name for f in files] == ["acct-sim-01", "acct-sim-02"]
        assert oct(files[0].stat().st_mode & 0o777) == "0o600"
        auth = json.loads(files[0].read_text())
        assert auth["OPENAI_API_KEY"] is None and auth["last_refresh"].endswith("Z")
        tokens = auth["tokens"]
        assert tokens["account_id"] == "acct-sim-01" and tokens["refresh_token"].startswith("rt_")
        access = claims(tokens["access_token"])
        assert access["https://api.openai.com/auth"]["chatgpt_account_id"] == "acct-sim-01"
        assert access["exp"] > access["iat"]
        assert claims(tokens["id_token"])["email"] == "sim1@codexlb.invalid"

        request = urllib.request.Request(
            events["listening"]["url"] + "/backend-api/wham/usage",
            headers={"Authorization": f"Bearer {tokens['access_token']}", "chatgpt-account-id": "acct-sim-01"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.load(resp)["rate_limit"]["allowed"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_sim_help_explains_itself():
    out = subprocess.run([sys.executable, "-m", "codexlb", "sim", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for words in ("--write-auth", "--accounts", "call:NAME", "/__sim/faults", "generate"):
        assert words in out
