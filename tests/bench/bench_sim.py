"""How many streamed responses per second the simulated upstream serves.

Run: .venv/bin/python tests/bench/bench_sim.py [--seconds 5] [--concurrency 16] [--reply-words 40]

The sim runs as its own process (as in proxy benchmarks); this process is the
load. Both share the machine, so the figure is a floor for the sim alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import aiohttp
import orjson

PAYLOAD = {"model": "gpt-5.5", "stream": True, "store": False,
           "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "bench"}]}]}


async def start_sim(reply_words: int) -> tuple[asyncio.subprocess.Process, str, dict[str, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codexlb", "sim", "--port", "0", "--accounts", "1", "--log-format", "json",
        "--log-level", "info", "--reply-words", str(reply_words), "--primary-limit-tokens", str(10**12),
        "--secondary-limit-tokens", str(10**12), stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = json.loads(await asyncio.wait_for(proc.stderr.readline(), 30))
        if line["event"] == "listening":
            url = line["url"]
            break
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/__sim/accounts") as resp:
            account = (await resp.json())["accounts"][0]
    headers = {"Authorization": f"Bearer {account['access_token']}", "chatgpt-account-id": account["account_id"]}
    return proc, url, headers


async def http_worker(http: aiohttp.ClientSession, url: str, headers: dict[str, str], deadline: float) -> int:
    done = 0
    body = orjson.dumps(PAYLOAD)
    while time.monotonic() < deadline:
        async with http.post(f"{url}/backend-api/codex/responses", data=body,
                             headers={**headers, "Content-Type": "application/json"}) as resp:
            raw = await resp.read()
            assert resp.status == 200 and b"response.completed" in raw, raw[:200]
        done += 1
    return done


async def ws_worker(http: aiohttp.ClientSession, url: str, headers: dict[str, str], deadline: float) -> int:
    done = 0
    frame = orjson.dumps({"type": "response.create", **{k: v for k, v in PAYLOAD.items() if k != "stream"}}).decode()
    async with http.ws_connect(f"{url}/backend-api/codex/responses", headers=headers) as ws:
        while time.monotonic() < deadline:
            await ws.send_str(frame)
            while True:
                message = await ws.receive(timeout=30)
                if b'"response.completed"' in message.data.encode():
                    break
            done += 1
    return done


async def measure(kind: str, url: str, headers: dict[str, str], seconds: float, concurrency: int) -> float:
    worker = http_worker if kind == "http" else ws_worker
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.monotonic()
        deadline = started + seconds
        counts = await asyncio.gather(*(worker(http, url, headers, deadline) for _ in range(concurrency)))
        return sum(counts) / (time.monotonic() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reply-words", type=int, default=40)
    args = parser.parse_args()
    proc, url, headers = await start_sim(args.reply_words)
    try:
        for kind in ("http", "ws"):
            rate = await measure(kind, url, headers, args.seconds, args.concurrency)
            print(f"sim {kind:4s}: {rate:8.0f} streamed responses/s "
                  f"({args.reply_words} words each, concurrency {args.concurrency}, cpu {os.cpu_count()})")
    finally:
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
