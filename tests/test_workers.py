"""`codexlb serve --workers N`: real processes on one real socket, against a real `codexlb sim`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CODEXLB_")}


def codexlb(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "codexlb", *args, "--log-format", "json"], env=ENV,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, event: str, lines: list[dict] | None = None) -> dict:
    """Read the process's log until `event`; every line read goes to `lines`."""
    for raw in proc.stderr:
        if not raw.startswith("{"):
            continue
        line = json.loads(raw)
        if lines is not None:
            lines.append(line)
        if line["event"] == event:
            return line
    raise AssertionError(f"{event!r} never logged")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def sim(tmp_path):
    proc = codexlb("sim", "--port", "0", "--accounts", "1", "--write-auth", str(tmp_path / "auth"))
    try:
        url = wait_for(proc, "listening")["url"]
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield url, sorted((tmp_path / "auth").glob("*/auth.json"))
    finally:
        stop(proc)


def start_workers(tmp_path: Path, *extra: str, workers: int = 3) -> tuple[subprocess.Popen, str, list[dict]]:
    """`serve --workers N`, once every worker is ready; the parent, its URL, and the log lines read so far."""
    proc = codexlb("serve", "--workers", str(workers), "--port", "0", "--data-dir", str(tmp_path / "data"), *extra)
    lines: list[dict] = []
    url = wait_for(proc, "listening", lines)["url"]
    for _ in range(workers):
        wait_for(proc, "worker ready", lines)
    return proc, url, lines


def test_several_worker_processes_serve_one_port(tmp_path):
    proc, url, lines = start_workers(tmp_path)
    try:
        workers = {line["pid"]: line["worker"] for line in lines if line["event"] == "worker ready"}
        assert sorted(workers.values()) == [1, 2, 3]
        record = json.loads((tmp_path / "data" / "server.json").read_text())
        assert record["pid"] == proc.pid and url.endswith(f":{record['port']}")
        seen = set()
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            seen.add(get_json(f"{url}/health/live")["pid"])
        assert len(seen) >= 2 and seen <= set(workers), (seen, workers)
    finally:
        stop(proc)


def test_a_killed_worker_is_restarted_and_no_connection_is_refused(tmp_path):
    proc, url, lines = start_workers(tmp_path)
    victim = next(line["pid"] for line in lines if line["event"] == "worker ready" and line["worker"] == 2)
    errors: list[str] = []
    served = [0]
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            try:
                get_json(f"{url}/health/live")
                served[0] += 1
            except OSError as exc:  # urllib wraps a refused connect in URLError: keep its reason's name
                errors.append(repr(getattr(exc, "reason", exc)))

    client = threading.Thread(target=hammer)
    client.start()
    try:
        os.kill(victim, signal.SIGKILL)
        exited = wait_for(proc, "worker exited; starting it again")
        assert exited["worker"] == 2 and exited["status"] == "killed by SIGKILL"
        ready = wait_for(proc, "worker ready")
        assert ready["worker"] == 2 and ready["pid"] != victim
    finally:
        done.set()
        client.join(30)
        stop(proc)
    print(f"{served[0]} requests while a worker was killed and restarted, errors: {errors}")
    # The one connection the client has open may be the one the victim was serving when SIGKILL landed: that
    # one is reset, and nothing can save it. No other may be lost, and none refused: the socket stays open.
    assert served[0] > 0 and not any("Refused" in error for error in errors), errors
    assert len(errors) <= 1 and all(error.startswith(("ConnectionResetError", "RemoteDisconnected"))
                                    for error in errors), errors


def test_sigterm_drains_an_in_flight_stream_and_the_parent_exits_zero(tmp_path, sim):
    sim_url, auth_files = sim
    imported = subprocess.run(
        [sys.executable, "-m", "codexlb", "accounts", "import", *map(str, auth_files), "--data-dir",
         str(tmp_path / "data"), "--port", "9"], env=ENV, capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    # The stream's end comes 2 s after its events: SIGTERM lands while it is in flight.
    fault = {"action": "delay", "end_ms": 2000, "times": 1}
    urllib.request.urlopen(urllib.request.Request(
        f"{sim_url}/__sim/faults", data=json.dumps(fault).encode(), headers={"Content-Type": "application/json"}),
        timeout=10).close()
    proc, url, _lines = start_workers(
        tmp_path, "--upstream-base-url", f"{sim_url}/backend-api", "--auth-base-url", sim_url, workers=2)
    try:
        request = urllib.request.Request(
            f"{url}/v1/responses", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "gpt-5.5", "input": "hello", "stream": True}).encode())
        with urllib.request.urlopen(request, timeout=30) as resp:
            first = resp.readline()
            assert first.startswith(b"event: ") or first.startswith(b"data: "), first
            proc.send_signal(signal.SIGTERM)
            body = first + resp.read()
        assert b"response.completed" in body
        assert proc.wait(timeout=60) == 0
        assert not (tmp_path / "data" / "server.json").exists()
    finally:
        stop(proc)


def test_workers_that_cannot_start_stop_the_parent_with_one_line(tmp_path):
    bad_key = tmp_path / "key"
    bad_key.write_text("not a key\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "codexlb", "serve", "--workers", "3", "--port", "0", "--data-dir",
         str(tmp_path / "data"), "--secret-key-file", str(bad_key), "--log-format", "json"],
        env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 1
    parent = [line for line in err.splitlines() if line.startswith("codexlb: error: worker")]
    assert len(parent) == 1 and "could not start (exit status 1" in parent[0], err
    assert err.rstrip().endswith(parent[0])
    assert not (tmp_path / "data").exists()  # a failed start leaves no data dir behind


def test_workers_is_bounded(tmp_path):
    done = subprocess.run([sys.executable, "-m", "codexlb", "serve", "--workers", "0", "--data-dir",
                           str(tmp_path / "d")], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "workers" in done.stderr and "between 1 and 64" in done.stderr


def test_one_worker_is_todays_single_process(tmp_path):
    proc = codexlb("serve", "--port", "0", "--data-dir", str(tmp_path / "data"))
    try:
        url = wait_for(proc, "listening")["url"]
        assert get_json(f"{url}/health/live")["pid"] == proc.pid
        assert json.loads((tmp_path / "data" / "server.json").read_text())["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_the_port_in_use_is_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as blocker:
        port = blocker.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "codexlb", "serve", "--workers", "2", "--port", str(port),
                               "--data-dir", str(tmp_path / "d")], env=ENV, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}: address already in use" in done.stderr


def test_workers_stop_when_the_parent_is_killed(tmp_path):
    proc, _url, _lines = start_workers(tmp_path, workers=2)
    proc.kill()
    proc.wait()
    # The workers drain and exit: the stderr they share with the test ends only once the last one is gone.
    assert proc.stderr.read().count('"event":"stopped"') == 2
