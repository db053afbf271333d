"""Which request headers cross to upstream, and which response headers come back."""

from __future__ import annotations

from typing import Mapping

from multidict import CIMultiDict

# Ours to set (auth, account, framing; the body goes up as codexlb wrote it, not encoded), the client's
# credentials, hop-by-hop and forwarding headers.
_DROP = frozenset({
    "authorization", "chatgpt-account-id", "host", "content-length", "content-encoding", "connection", "keep-alive",
    "proxy-authorization", "proxy-authenticate", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "cookie", "forwarded", "x-real-ip", "x-api-key", "accept-encoding", "expect",
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
})
_DROP_PREFIXES = ("x-forwarded-", "cf-", "x-codexlb-")
# Upstream answers the client reads: turn state, rate limits, model and request ids.
_RETURN_PREFIXES = ("x-codex-", "openai-", "x-request-id")


def upstream_request_headers(client: Mapping[str, str], account_headers: Mapping[str, str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client.items():
        lowered = name.lower()
        if lowered in _DROP or lowered.startswith(_DROP_PREFIXES):
            continue
        out.add(name, value)
    out.update(account_headers)
    return out


def client_response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in upstream.items() if name.lower().startswith(_RETURN_PREFIXES)}
