"""What the WebSocket route reads of upstream's frames and what it passes on, against an upstream that sends
frames written as a test wants them (test_http_bridge_frames' script): every frame reaches the client byte for
byte, whether the route read it whole or only its type, and what the frames it must read say is noted."""

from __future__ import annotations

import time

import orjson
import pytest
from aiohttp import WSMsgType

from codexlb.upstream.state import UPSTREAM
from tests.bridge.test_http_bridge_frames import BROKEN, ITEM, ODD, TYPE_FIRST, scripted_upstream
from tests.bridge.test_ledger import ledger
from tests.proxy.conftest import start_proxy
from tests.simclient import body, user


@pytest.mark.parametrize("frames", [TYPE_FIRST, TYPE_FIRST[:3] + ODD + TYPE_FIRST[3:],
                                    TYPE_FIRST[:3] + [BROKEN] + TYPE_FIRST[3:]],
                         ids=["type first", "odd ones too", "a line break"])
async def test_frames_reach_the_client_as_written_and_what_they_say_is_noted(aiohttp_server, settings, sim, http,
                                                                              frames):
    upstream, creates = await scripted_upstream(aiohttp_server, frames)
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=1, upstream_base_url=upstream)
    async with http.ws_connect(f"{proxy.codex_base_url}/responses",
                               headers={"session_id": "conv-ws-frames",
                                        "openai-beta": "responses_websockets=2026-02-06"}) as ws:
        await ws.send_str(orjson.dumps({"type": "response.create", **body(user("one"))}).decode())
        got = []
        while len(got) < len(frames):
            message = await ws.receive(timeout=10)
            assert message.type is WSMsgType.TEXT, message
            got.append(message.data.encode())
        assert got == frames  # the terminal came last: a delta naming one was not taken for it

    account = proxy.roster.all()[0]
    assert account.primary is not None and account.primary.used_percent == 42.0
    assert proxy.pool.sticky.get("resp:resp_script", time.time()) == account.id
    [row] = await ledger(http, proxy, "conv-ws-frames")
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (11, 3, 7, 2)
    # The output is in the transcript, for a recovery to send the whole history from.
    assert proxy.app[UPSTREAM].transcripts.history("resp_script") == [user("one"), ITEM]
    assert len(creates) == 1
