"""Secrets never reach the log, whoever logs them and in whichever format; a client's garbage is not logged
as our error."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from datetime import datetime, timezone

import pytest

from codexlb import log
from codexlb.app import create_app
from tests.serving import serving

ACCESS = "eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDAwMDAsInN1YiI6InUifQ.sig"
REFRESH = "rt_AbCdEf0123456789xyz"
API_KEY = "sk-clb-0123456789abcdefSECRET"


@pytest.fixture(params=["json", "console"])
def log_stream(request):
    stream = io.StringIO()
    log.configure("debug", request.param, stream)
    yield stream
    log.configure("info", "json", io.StringIO())


def assert_clean(text: str) -> None:
    for secret in (ACCESS, REFRESH, API_KEY, "SECRET", "hunter2", "sessioncookie"):
        assert secret not in text, text
    assert log.REDACTED in text


def test_structlog_events_are_redacted(log_stream):
    logger = log.get("test")
    logger.info(
        "upstream call",
        headers={"Authorization": f"Bearer {ACCESS}", "Cookie": "sessioncookie", "Accept": "text/plain"},
        body={"refresh_token": REFRESH, "nested": [{"api_key": API_KEY}]},
        note=f"retrying with Bearer {ACCESS} and key {API_KEY}",
        form=f"grant_type=refresh_token&refresh_token={REFRESH}&password=hunter2",
        shouted=f"AUTHORIZATION: BEARER {API_KEY}; PASSWORD: hunter2",
    )
    text = log_stream.getvalue()
    assert_clean(text)
    assert "text/plain" in text and "upstream call" in text


def test_library_logs_and_tracebacks_are_redacted(log_stream):
    logging.getLogger("aiohttp.client").warning("sent Authorization: Bearer %s", ACCESS)
    try:
        raise ValueError(f"bad token {REFRESH} for key {API_KEY}")
    except ValueError:
        log.get("test").exception("refresh failed")
    text = log_stream.getvalue()
    assert_clean(text)
    assert "ValueError" in text and "Traceback" in text


def test_json_lines_lead_with_time_level_event():
    stream = io.StringIO()
    log.configure("info", "json", stream)
    log.get("codexlb.test").info("hello", n=1)
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert list(record)[:4] == ["timestamp", "level", "logger", "event"]
    assert record["n"] == 1
    stamped = datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(stamped.timestamp() - time.time()) < 5


def test_level_filters():
    stream = io.StringIO()
    log.configure("warning", "json", stream)
    log.get("t").info("quiet")
    log.get("t").warning("loud")
    assert "quiet" not in stream.getvalue() and "loud" in stream.getvalue()


async def test_one_line_per_request_without_secrets(aiohttp_client, settings):
    stream = io.StringIO()
    log.configure("info", "json", stream)
    client = await aiohttp_client(create_app(settings))
    resp = await client.get(
        f"/health/ready?api_key={API_KEY}",
        headers={"Authorization": f"Bearer {API_KEY}", "x-request-id": "rid-1"},
    )
    assert resp.status == 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 1
    assert requests[0]["path"] == "/health/ready"
    assert requests[0]["status"] == 200
    assert requests[0]["request_id"] == "rid-1"
    assert API_KEY not in stream.getvalue()


# A client's garbage, each kind aiohttp's parser refuses with 400 (and logged at ERROR with a traceback).
MALFORMED = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "not http at all": bytes(range(256)),
    "bad header": b"GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
    "oversized header line": b"GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
    "invalid chunked encoding": b"POST /api/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "garbage after a good request": b"GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\x16\x03\x01 hello\r\n\r\n",
    # Answered by codexlb (400 invalid_body); aiohttp then reads the rest and logged the same fault again.
    "a body not encoded as its Content-Encoding says": b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Encoding: gzip\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}",
}


@pytest.mark.parametrize("sent", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_is_one_line_naming_the_client_not_an_error(settings, sent):
    stream = io.StringIO()
    log.configure("debug", "json", stream)
    try:
        async with serving(settings, create_app(settings)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
            writer.write(sent)
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
    finally:
        log.configure("info", "json", io.StringIO())
    assert b"HTTP/1.0 400 Bad Request" in answer or b"HTTP/1.1 400 Bad Request" in answer, answer[:200]
    # An OpenAI-compatible client reads errors as JSON (aiohttp's own answer was plain text).
    assert json.loads(answer.rsplit(b"\r\n\r\n", 1)[1])["error"]["code"] in ("malformed_request", "invalid_body")
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert "Traceback" not in text and not [line for line in lines if line["level"] in ("error", "critical")]
    # One line names the client and the fault: aiohttp's refusal, or codexlb's own 400 (then aiohttp's reading
    # the rest of the body into the same fault is a debug line that names no one).
    [line] = [line for line in lines if line["event"] == "malformed request" and line["remote"]] + [
        line for line in lines if line["event"] == "request" and line["status"] == 400]
    assert line["level"] in ("info", "debug") and line["remote"] == "127.0.0.1"
    assert line.get("reason", line.get("path"))


async def test_a_client_that_hangs_up_mid_request_is_not_an_error(settings):
    stream = io.StringIO()
    log.configure("debug", "json", stream)
    try:
        async with serving(settings, create_app(settings)) as port:
            _, writer = await asyncio.open_connection("127.0.0.1", int(port))
            writer.write(b"POST /api/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"na")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
    finally:
        log.configure("info", "json", io.StringIO())
    text = stream.getvalue()
    assert "Traceback" not in text and '"level":"error"' not in text


async def test_a_bridge_session_not_made_says_why(aiohttp_client, settings):
    """The log names the error's code and message (no_accounts here), not only `APIError`."""
    stream = io.StringIO()
    log.configure("info", "json", stream)
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/backend-api/codex/responses", json={"model": "gpt-5.1-codex", "input": "hi"},
                             headers={"session-id": "0190f0f0-0000-7000-8000-000000000001"})
    await resp.read()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [line] = [line for line in lines if line["event"] == "bridge session not made"]
    assert line["code"] == "no_accounts" and "account" in line["reason"], line


async def test_a_failed_usage_poll_names_the_host(aiohttp_client, settings, sim):
    from codexlb.services import USAGE

    stream = io.StringIO()
    log.configure("info", "json", stream)
    client = await aiohttp_client(create_app(settings))  # upstream 127.0.0.1:9 refuses at once
    resp = await client.post("/api/accounts", json=sim.backend.accounts[0].auth_json())
    assert resp.status == 201
    await client.app[USAGE].poll_all()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [line] = [line for line in lines if line["event"] == "usage poll failed"]
    assert line["host"] == "127.0.0.1" and "127.0.0.1:9" in line["reason"], line
