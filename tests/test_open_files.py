"""`serve` raises its open-files limit for the streams it lets in: the real command, started as a shell with
the usual soft limit of 1,024 (or less) would start it."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

import pytest

from tests.serving import child_env


def _serve(tmp_path, soft: int, hard: int, *flags: str) -> tuple[list[dict], int]:
    """Start `serve` under these limits; its log lines up to "listening", and the soft limit it then had."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    proc = subprocess.Popen(
        [sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
         "--log-format", "json", *flags],
        env=child_env(), stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    try:
        lines = []
        while not lines or lines[-1]["event"] != "listening":
            line = proc.stderr.readline()
            assert line, f"serve exited: {lines}"
            lines.append(json.loads(line))
        with open(f"/proc/{proc.pid}/limits") as limits:
            row = next(r for r in limits if r.startswith("Max open files"))
        return lines, int(row.split()[3])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard < 2048:
        pytest.skip(f"this machine's hard open-files limit ({hard}) leaves nothing to raise to")
    return hard


def test_serve_raises_its_soft_limit_to_the_hard_one(tmp_path):
    hard = _hard()
    lines, soft = _serve(tmp_path, 256, hard)
    assert soft == hard
    assert [line["event"] for line in lines] == ["listening"]  # nothing to warn about


def test_a_hard_limit_short_of_max_inflight_is_told_at_start(tmp_path):
    _hard()
    lines, soft = _serve(tmp_path, 256, 1024, "--max-inflight", "600")
    assert soft == 1024
    warning = next(line for line in lines if line["event"] == "open files limit too low")
    assert warning["level"] == "warning"
    assert (warning["limit"], warning["needed"]) == (1024, 2 * 600 + 256)
    assert "LimitNOFILE" in warning["hint"]


def test_a_hard_limit_that_fits_is_not_warned_about(tmp_path):
    _hard()
    lines, soft = _serve(tmp_path, 256, 1024, "--max-inflight", "300")
    assert soft == 1024
    assert [line["event"] for line in lines] == ["listening"]
