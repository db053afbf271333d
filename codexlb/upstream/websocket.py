"""Opening a Responses WebSocket upstream: on one account (`connect`, and `reconnect` where a conversation
lives), or on the first of the pool's accounts that accepts the handshake (`open_socket`), each handshake
bounded in time and behind the `upstream_connects` gate."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import aiohttp

from codexlb.account import Account
from codexlb.admission.gate import Slot
from codexlb.pool.quota import verdict_for_error, windows_from_headers
from codexlb.upstream.failover import Failure, fail_over, renewed
from codexlb.upstream.headers import upstream_request_headers
from codexlb.upstream.session import account_headers
from codexlb.upstream.state import TERMINAL, Outcome, Upstream

WS_BETA = "responses_websockets=2026-02-06"
# Pings both ways find a dead peer within this bound (aiohttp closes when a pong is half of it late).
HEARTBEAT_S = 30.0
# The frame budget upstream allows (≈15 MiB); the client side uses the same.
MAX_FRAME = 16 * 1024 * 1024
# Reads are bounded by the caller (per phase); a close waits this long for the peer's close frame.
_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)
# How upstream starts every event it writes.
_TYPE_FIRST = b'{"type":"'
# The events whose content a carrier must read (what `state.observe` notes, the output kept for the
# transcript, and errors); every other frame is passed on unread.
MUST_READ = frozenset(kind.encode() for kind in (
    "response.created", "codex.rate_limits", "response.output_item.done", *TERMINAL))


def frame_type(frame: bytes) -> bytes | None:
    """An event frame's type read off its start, where upstream writes it, without parsing the frame (text
    further on, a delta's included, is never looked at); None when the frame does not start so: parse it."""
    if frame.startswith(_TYPE_FIRST):
        start = len(_TYPE_FIRST)
        end = frame.find(b'"', start)
        if end != -1 and frame.find(b"\\", start, end) == -1:
            return frame[start:end]
    return None


@dataclass(slots=True)
class UpstreamSocket:
    ws: aiohttp.ClientWebSocketResponse
    account: Account
    turn_state: str | None


async def connect(up: Upstream, account: Account, client_headers: Mapping[str, str],
                  turn_state: str | None) -> UpstreamSocket | Failure:
    """One handshake on one account; `turn_state` lands it on the backend that holds the conversation.
    Text frames are read as the UTF-8 bytes they came in: both carriers pass most of them on unread (no
    decoding, nor encoding again)."""
    token = account.tokens.access_token
    headers = upstream_request_headers(client_headers, account_headers(account, token))
    if "openai-beta" not in headers:
        headers["openai-beta"] = WS_BETA
    if turn_state:
        headers["x-codex-turn-state"] = turn_state
    try:
        async with up.gates.upstream_connects.slot(), asyncio.timeout(up.settings.upstream_connect_timeout_s):
            ws = await up.http.ws_connect(up.responses_url, headers=headers, heartbeat=HEARTBEAT_S,
                                          max_msg_size=MAX_FRAME, timeout=_TIMEOUT, decode_text=False)
    except aiohttp.WSServerHandshakeError as exc:
        failure = Failure(exc.status, {}, exc.headers or {}, reason="handshake refused", token=token)
        verdict = verdict_for_error(exc.status, {}, failure.headers, time.time())
        if verdict is not None:
            up.roster.note_verdict(account, verdict)
        return failure
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Failure(0, reason="timeout" if isinstance(exc, TimeoutError) else "connect failed")
    # aiohttp keeps the 101 answer's headers on the handshake response only.
    answer = ws._response.headers
    now = time.time()
    up.roster.note_windows(account, windows_from_headers(answer, now), now)
    return UpstreamSocket(ws, account, answer.get("x-codex-turn-state") or turn_state)


async def reconnect(up: Upstream, account: Account, client_headers: Mapping[str, str],
                    turn_state: str | None) -> UpstreamSocket | Failure:
    """`connect` again on the account and turn state that hold a conversation; a 401 earns one more handshake
    with renewed tokens, as in failover (the conversation cannot move to another account here)."""
    result = await connect(up, account, client_headers, turn_state)
    if isinstance(result, Failure) and result.status == 401 and await renewed(up, account, result):
        result = await connect(up, account, client_headers, turn_state)
    return result


async def open_socket(up: Upstream, client_headers: Mapping[str, str], keys: Sequence[str],
                      outcome: Outcome) -> tuple[UpstreamSocket, Slot]:
    """A socket on the first account whose handshake succeeds, with that account's stream slot (the
    caller releases it); raises the APIError the client's handshake should be denied with."""
    return await fail_over(up, keys, outcome, lambda account, _slot: connect(
        up, account, client_headers, None))
