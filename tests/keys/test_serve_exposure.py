"""`serve` on a non-loopback address: refused with no key, unless a key exists or the operator says so."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from codexlb.loopback import is_loopback_host, is_loopback_remote
from tests.serving import child_env

ENV = child_env()


def serve(data_dir, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "codexlb", "serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(data_dir),
         "--log-format", "json", *extra],
        env=ENV, stderr=subprocess.PIPE, text=True,
    )


def stop_cleanly(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_refuses_to_listen_on_every_address_without_a_key(tmp_path):
    proc = serve(tmp_path / "d")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert err.count("\n") == 1, err
    assert err.startswith("codexlb: error: refusing to listen on 0.0.0.0 with no API key")
    assert "codexlb keys create" in err and "--allow-unauthenticated" in err


def test_allow_unauthenticated_starts_and_stops_cleanly(tmp_path):
    proc = serve(tmp_path / "d", "--allow-unauthenticated")
    try:
        first = json.loads(proc.stderr.readline())
        assert first["event"] == "listening", first
        port = first["url"].rsplit(":", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=10) as resp:
            assert resp.status == 200
        stop_cleanly(proc)
    finally:
        proc.kill()
        proc.wait()


def test_a_key_is_enough_to_listen_everywhere_and_is_then_required(tmp_path):
    data = tmp_path / "d"
    made = subprocess.run([sys.executable, "-m", "codexlb", "keys", "create", "--json", "--data-dir", str(data)],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    proc = serve(data)
    try:
        first = json.loads(proc.stderr.readline())
        assert first["event"] == "listening", first
        port = first["url"].rsplit(":", 1)[1]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert refused.value.code == 401
        assert json.loads(refused.value.read())["error"]["code"] == "invalid_api_key"
        stop_cleanly(proc)
        assert key[11:] not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.5", False), ("example.com", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(("remote", "loopback"), [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("::ffff:8.8.8.8", False), ("10.0.0.2", False), (None, False), ("", False), ("garbage", False),
])
def test_loopback_remotes(remote, loopback):
    assert is_loopback_remote(remote) is loopback
