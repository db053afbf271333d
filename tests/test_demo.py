"""`codexlb demo`, the README's first command: a real process, answering through its own sim."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from tests.serving import child_env


def test_demo_serves_and_stops_cleanly(tmp_path):
    env = child_env()
    env["HOME"] = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "codexlb", "demo", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stdout:
            found = re.search(r"codexlb demo is running: proxy (\S+),", line)
            if found:
                url = found.group(1)
                break
        assert url, proc.stderr.read()
        request = urllib.request.Request(f"{url}/v1/responses", data=json.dumps(
            {"model": "gpt-5.5", "input": "hello demo"}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.load(resp)
        assert "You said: hello demo" in answer["output"][0]["content"][0]["text"]
        # The dashboard it points to answers, with the demo's accounts (this machine, no password).
        with urllib.request.urlopen(f"{url}/api/accounts", timeout=30) as resp:
            assert len(json.load(resp)["accounts"]) >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not list(tmp_path.glob(".codexlb")), "the demo must not touch the user's data dir"
    finally:
        proc.kill()
        proc.wait()
