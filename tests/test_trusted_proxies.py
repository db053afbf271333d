"""Who a client is: forwarding headers are believed only from the proxies the operator lists."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from codexlb import log
from codexlb.app import create_app
from codexlb.trusted_proxies import TrustedProxies

PROXY = "127.0.0.1"


@pytest.mark.parametrize("headers", [{"X-Forwarded-For": "10.9.0.1"}, {"X-Real-IP": "10.9.0.1"},
                                     {"Forwarded": "for=10.9.0.1"}])
def test_nobody_is_trusted_by_default(headers):
    # A client on this machine used to name itself anew with each request and so reset its login limit.
    assert TrustedProxies(()).client("127.0.0.1", headers) == "127.0.0.1"
    assert TrustedProxies(("10.0.0.0/8",)).client("127.0.0.1", headers) == "127.0.0.1"


@pytest.mark.parametrize(("trusted", "remote", "headers", "client"), [
    # The right-most address not ours: what the client wrote further left does not count.
    ((PROXY,), PROXY, {"X-Forwarded-For": "192.0.2.10, 203.0.113.66"}, "203.0.113.66"),
    # A chain of our own proxies is walked past.
    ((PROXY, "10.0.0.0/8"), PROXY, {"X-Forwarded-For": "192.0.2.10, 203.0.113.66, 10.1.2.3"}, "203.0.113.66"),
    ((PROXY,), PROXY, {"X-Forwarded-For": "203.0.113.66:51234"}, "203.0.113.66"),
    ((PROXY,), PROXY, {"X-Forwarded-For": "[2001:db8::7]:443"}, "2001:db8::7"),
    ((PROXY,), PROXY, {"Forwarded": 'for=192.0.2.10;proto=https, for="[2001:db8::7]:4711";by=x'}, "2001:db8::7"),
    ((PROXY,), PROXY, {"X-Real-IP": "203.0.113.66"}, "203.0.113.66"),
    # Headers that agree; X-Real-IP naming a proxy of ours names no client.
    ((PROXY,), PROXY, {"X-Forwarded-For": "203.0.113.66", "X-Real-IP": "203.0.113.66"}, "203.0.113.66"),
    ((PROXY, "10.0.0.0/8"), PROXY, {"X-Forwarded-For": "203.0.113.66, 10.0.0.9", "X-Real-IP": "10.0.0.9"},
     "203.0.113.66"),
    # A dual-stack listener sees the IPv4 proxy as ::ffff:127.0.0.1.
    ((PROXY,), "::ffff:127.0.0.1", {"X-Forwarded-For": "203.0.113.66"}, "203.0.113.66"),
    ((PROXY,), "::ffff:198.51.100.1", {"X-Forwarded-For": "203.0.113.66"}, "198.51.100.1"),
    # Only proxies in the chain, or none: the proxy itself is the client.
    ((PROXY,), PROXY, {"X-Forwarded-For": "127.0.0.1"}, PROXY),
    ((PROXY,), PROXY, {}, PROXY),
    ((PROXY,), PROXY, {"Forwarded": "for=unknown"}, "unknown"),
])
def test_behind_trusted_proxies_the_client_they_name(trusted, remote, headers, client):
    assert TrustedProxies(trusted).client(remote, headers) == client


def test_headers_that_disagree_are_not_believed_and_said_once():
    stream = io.StringIO()
    log.configure("info", "json", stream)
    proxies = TrustedProxies((PROXY,))
    for n in range(3):
        # X-Real-IP from a proxy that appends to X-Forwarded-For is the client's own writing, or the reverse.
        headers = {"X-Forwarded-For": "203.0.113.66", "X-Real-IP": f"10.9.0.{n}"}
        assert proxies.client(PROXY, headers) == PROXY
    warnings = [json.loads(line) for line in stream.getvalue().splitlines()]
    warnings = [w for w in warnings if w["level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["x_forwarded_for"] == "203.0.113.66" and warnings[0]["x_real_ip"] == "10.9.0.0"
    assert warnings[0]["proxy"] == PROXY


@pytest.mark.parametrize(("trusted", "remote"), [((), "127.0.0.1"), ((PROXY,), "203.0.113.7")])
async def test_the_access_log_names_the_client_by_the_same_rule(aiohttp_client, settings, trusted, remote):
    stream = io.StringIO()
    log.configure("info", "json", stream)
    client = await aiohttp_client(create_app(dataclasses.replace(settings, trusted_proxies=trusted)))
    resp = await client.get("/health/ready", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    assert resp.status == 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["remote"] for line in lines if line["event"] == "request"] == [remote]
