"""Each codexlb path against the bare relay of its own transport, in one run: CPU per request and per
event of the relaying process, and proxied/direct throughput, at concurrency 1 and 32.

Run: .venv/bin/python tests/bench/bench_paths.py [--seconds 6] [--rounds 3] [--reply-words 40]

Pairs (codexlb path : its baseline):
  plain HTTP              : bare SSE relay (bench_proxy.BARE_RELAY), HTTP in, HTTP out
  HTTP bridge (session_id): bare HTTP-to-WS relay: one POST becomes one `response.create` frame on an
                            upstream WebSocket kept per `session_id`; frames come back as SSE, each
                            read only for its type, those already received written together
  WebSocket route         : bare WS-to-WS relay: one upstream WebSocket per client WebSocket, frames
                            relayed both ways untouched
Each baseline is its own process on the same stack (aiohttp server and client, the default event loop
policy, as codexlb's) and does only the transport: no pool, parsing past the event type, accounting or
log. "direct" is the client talking to the sim itself over the same transport as the client side of
the pair (HTTP for the first two, WebSocket for the third). The admission caps are raised past the
concurrency so no request waits in codexlb's line. Rounds take every target in turn; each figure is the
median over rounds, since a shared machine's load drifts more between runs than within a round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxy import (BARE_RELAY, PAYLOAD, cpu_s, settled, start_sim_and_serve,  # noqa: E402
                         stop, throughput)

WS_BETA = {"openai-beta": "responses_websockets=2026-02-06"}
FRAME = orjson.dumps({"type": "response.create",
                      **{k: v for k, v in orjson.loads(PAYLOAD).items() if k != "stream"}}).decode()
TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}

# Relays' shared prologue: upstream URL and account from argv, a listening aiohttp app on a free port.
_RELAY_HEAD = """
import asyncio, sys
import aiohttp, orjson
from aiohttp import web
upstream, token, account = sys.argv[1:4]
headers = {"Authorization": "Bearer " + token, "chatgpt-account-id": account,
           "openai-beta": "responses_websockets=2026-02-06"}
"""
_RELAY_MAIN = """
async def main():
    app = web.Application()
    app["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app["sockets"] = {}
    app.router.add_route(METHOD, "/backend-api/codex/responses", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

WS_RELAY = _RELAY_HEAD + """
METHOD = "GET"
async def pump(source, sink):
    async for message in source:  # text frames as the bytes they came in, passed on undecoded
        await sink.send_frame(message.data, message.type)
async def relay(request):
    client = web.WebSocketResponse(max_msg_size=0, decode_text=False)
    await client.prepare(request)
    async with request.app["http"].ws_connect(upstream, headers=headers, max_msg_size=0, decode_text=False) as up:
        down = asyncio.create_task(pump(up, client))
        await pump(client, up)
        down.cancel()
    return client
""" + _RELAY_MAIN

HTTP_WS_RELAY = _RELAY_HEAD + """
METHOD = "POST"
TERMINAL = {b"response.completed", b"response.failed", b"response.incomplete", b"error"}
async def relay(request):
    body = orjson.loads(await request.read())
    body.pop("stream", None)
    sockets, session = request.app["sockets"], request.headers["session_id"]
    up = sockets.get(session)
    if up is None or up.closed:
        # Frames as the bytes they came in: nothing decoded to be encoded again.
        up = sockets[session] = await request.app["http"].ws_connect(upstream, headers=headers, max_msg_size=0,
                                                                     decode_text=False)
    await up.send_str(orjson.dumps({"type": "response.create", **body}).decode())
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    # Frames aiohttp has already read (no public call says whether a receive would wait) go out in one write.
    received = up._reader._buffer
    while True:
        out = []
        while True:
            data = (await up.receive()).data
            kind = data[9:data.index(b'"', 9)]  # only the type, which upstream writes first: {"type":"...
            out += (b"event: ", kind, b"\\ndata: ", data, b"\\n\\n")
            if kind in TERMINAL:
                await resp.write_eof(b"".join(out))
                return resp
            if not received:
                break
        await resp.write(b"".join(out))
""" + _RELAY_MAIN


async def spawn_relay(script: str, upstream: str, token: str, account: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, upstream, token, account,
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(await asyncio.wait_for(proc.stdout.readline(), 30))}"


async def ws_throughput(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    """Requests/s of `concurrency` workers, each one WebSocket sending turn after turn."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        deadline = time.monotonic() + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            async with http.ws_connect(url, headers=headers, max_msg_size=0) as ws:
                while time.monotonic() < deadline:
                    await ws.send_str(FRAME)
                    while True:
                        message = await ws.receive(timeout=30)
                        assert message.type is aiohttp.WSMsgType.TEXT, message
                        if orjson.loads(message.data)["type"] in TERMINAL:
                            break
                    done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


async def events_per_turn(url: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, data=PAYLOAD, headers=headers) as resp:
        return (await resp.read()).count(b"\ndata: ")


Run = Callable[[str, dict[str, str], int, float], Awaitable[float]]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput time per target and concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="rounds the throughput time is split into")
    parser.add_argument("--reply-words", type=int, default=40)
    args = parser.parse_args()
    sim, sim_url, proxy, proxy_url = await start_sim_and_serve(
        "codexlb-bench-paths-", args.reply_words, "--max-inflight", "256", "--account-max-streams", "64")
    relays: list[asyncio.subprocess.Process] = []
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{sim_url}/__sim/accounts") as resp:
            account = (await resp.json())["accounts"][0]
        auth = {"Authorization": f"Bearer {account['access_token']}", "chatgpt-account-id": account["account_id"]}
        json_type = {"Content-Type": "application/json"}
        direct = f"{sim_url}/backend-api/codex/responses"
        proxied = f"{proxy_url}/backend-api/codex/responses"
        ws_url = direct.replace("http://", "ws://")
        urls = {}
        for name, script, upstream in (("bare SSE", BARE_RELAY, direct), ("bare WS-WS", WS_RELAY, ws_url),
                                       ("bare HTTP-WS", HTTP_WS_RELAY, ws_url)):
            proc, base = await spawn_relay(script, upstream, account["access_token"], account["account_id"])
            relays.append(proc)
            urls[name] = (f"{base}/backend-api/codex/responses", proc.pid)
        events = await events_per_turn(direct, {**auth, **json_type})
        bridged = {**json_type, "session_id": "bench"}
        # name: (run, url, headers, pid of the relaying process or None for direct)
        targets: dict[str, tuple[Run, str, dict[str, str], int | None]] = {
            "direct HTTP": (throughput, direct, {**auth, **json_type}, None),
            "plain HTTP": (throughput, proxied, json_type, proxy.pid),
            "bare SSE": (throughput, urls["bare SSE"][0], json_type, urls["bare SSE"][1]),
            "HTTP bridge": (throughput, proxied, bridged, proxy.pid),
            "bare HTTP-WS": (throughput, urls["bare HTTP-WS"][0], bridged, urls["bare HTTP-WS"][1]),
            "direct WS": (ws_throughput, ws_url, {**auth, **WS_BETA}, None),
            "WS route": (ws_throughput, proxied.replace("http://", "ws://"), WS_BETA, proxy.pid),
            "bare WS-WS": (ws_throughput, urls["bare WS-WS"][0].replace("http://", "ws://"), WS_BETA,
                           urls["bare WS-WS"][1]),
        }
        pairs = (("plain HTTP", "bare SSE", "direct HTTP"), ("HTTP bridge", "bare HTTP-WS", "direct HTTP"),
                 ("WS route", "bare WS-WS", "direct WS"))
        # Warm every path once (imports, pools, upstream sockets) outside the measured rounds.
        for run, url, headers, _ in targets.values():
            await run(url, headers, 1, 0.2)
        print(f"{args.reply_words}-word replies, {events} events a turn; {args.seconds:g} s per target and "
              f"concurrency in {args.rounds} rounds; medians over rounds; cpu count {os.cpu_count()}")
        for concurrency in (1, 32):
            rates: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, list[float]] = {name: [] for name in targets}  # relaying process's µs per request
            for _ in range(args.rounds):
                for name, (run, url, headers, pid) in targets.items():
                    await settled([p for p in (pid, sim.pid) if p is not None])
                    before = cpu_s(pid) if pid else 0.0
                    rate = await run(url, headers, concurrency, args.seconds / args.rounds)
                    rates[name].append(rate)
                    if pid:
                        cpu[name].append((cpu_s(pid) - before) / (rate * args.seconds / args.rounds) * 1e6)
            print(f"concurrency {concurrency}:")
            for path, bare, base in pairs:
                def ratio(name: str) -> float:
                    return statistics.median(a / d for a, d in zip(rates[name], rates[base]))

                p_us, b_us = statistics.median(cpu[path]), statistics.median(cpu[bare])
                print(f"  {path:11s} {p_us:5.0f} µs/request {p_us / events:4.1f} µs/event  vs {bare:12s} "
                      f"{b_us:5.0f} µs/request {b_us / events:4.1f} µs/event  cpu ratio {p_us / b_us:4.2f}  "
                      f"proxied/direct {ratio(path):4.2f} (bare {ratio(bare):4.2f}; direct "
                      f"{statistics.median(rates[base]):5.0f}/s)")
    finally:
        await stop(*relays, proxy, sim)


if __name__ == "__main__":
    asyncio.run(main())
