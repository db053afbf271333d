"""Does codexlb's memory settle under steady load? N streaming clients for M minutes, and the `codexlb
serve` process's RSS and open file descriptors each interval.

Run: .venv/bin/python tests/bench/bench_soak.py [--clients 50] [--minutes 30] [--warmup-minutes 2]
     [--interval-s 60] [--turns 8] [--ws-turns 4] [--reply-words 40] [--serve-arg=--bridge-max-sessions=64 ...]

The sim and codexlb each run as their own process on loopback (as in bench_proxy.py); this process is
the clients. The clients are dealt round-robin to three paths, each as a real client uses it:
- plain: a one-off streamed request, alternately to /v1/responses and /backend-api/codex/responses,
  with no session id;
- bridged: the Codex CLI over HTTP: a session_id header, the whole conversation resent each turn
  (input, the previous answers' output, a new user message), reasoning asked for; after `--turns`
  turns the client starts a new conversation, so the bridge's sessions (one upstream WebSocket each),
  the sticky map and the reasoning-item owners fill to their bounds and evict, as in real use;
- websocket: the Codex CLI over WebSocket: `response.create` frames on /backend-api/codex/responses
  that continue with previous_response_id and only the new items; the client reconnects every
  `--ws-turns` turns (going on with the same conversation) and starts a new conversation every `--turns`.
Growth after warm-up: the RSS at the last interval against the RSS at the end of the warm-up minutes
(the samples before are the caches filling and the allocator's arenas growing to the load); the fitted
slope of the post-warm-up samples, as MB per hour, says whether growth is still going on at the end.
Environment variables reach `codexlb serve` (e.g. MALLOC_ARENA_MAX=2), bar CODEXLB_* ones.
Linux only (/proc). Every loop ends at the deadline; nothing listens beyond loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxy import start_sim_and_serve  # noqa: E402

MODEL = "gpt-5.5"
WS_HEADERS = {"openai-beta": "responses_websockets=2026-02-06"}
PATHS = ("plain", "bridged", "websocket")


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Tally:
    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()

    def fail(self, path: str, reason: str) -> None:
        self.failed[path] += 1
        self.reasons[f"{path}: {reason}"[:160]] += 1


def completed(raw: bytes) -> dict[str, Any] | None:
    """The response of an SSE stream's `response.completed` event (the last frame), if it ended so."""
    tail = raw.rstrip().rsplit(b"\n\n", 1)[-1]
    if not tail.startswith(b"event: response.completed\n"):
        return None
    return orjson.loads(tail.split(b"\ndata: ", 1)[1])["response"]


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
               headers: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
    async with http.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json", **headers},
                         timeout=aiohttp.ClientTimeout(total=120)) as resp:
        raw = await resp.read()
        if resp.status != 200:
            return None, f"HTTP {resp.status} {raw[:120]!r}"
        response = completed(raw)
        return response, "" if response is not None else f"no response.completed: {raw[-80:]!r}"


async def plain(http: aiohttp.ClientSession, base: str, n: int, deadline: float, tally: Tally) -> None:
    for i in itertools.count():
        if time.monotonic() >= deadline:
            return
        url = f"{base}/v1/responses" if i % 2 else f"{base}/backend-api/codex/responses"
        body = {"model": MODEL, "stream": True, "store": False, "input": [user(f"plain {n} {i}")]}
        await attempt(tally, "plain", post(http, url, body, {}))


async def bridged(http: aiohttp.ClientSession, base: str, n: int, turns: int, deadline: float,
                  tally: Tally) -> None:
    url = f"{base}/backend-api/codex/responses"
    for conversation in itertools.count():
        session = f"soak-http-{n}-{conversation}"
        headers = {"session_id": session, "originator": "codex_cli_rs"}
        history: list[Any] = []
        for turn in range(turns):
            if time.monotonic() >= deadline:
                return
            history.append(user(f"bridged {n} {conversation} {turn}"))
            body = {"model": MODEL, "instructions": "You are a soak test.", "input": history, "stream": True,
                    "store": False, "include": ["reasoning.encrypted_content"], "prompt_cache_key": session}
            response = await attempt(tally, "bridged", post(http, url, body, headers))
            if response is None:
                break  # start over with a new conversation, as a user would
            history = history + response["output"]


async def websocket(http: aiohttp.ClientSession, base: str, n: int, turns: int, ws_turns: int,
                    deadline: float, tally: Tally) -> None:
    url = f"{base}/backend-api/codex/responses"
    for conversation in itertools.count():
        if time.monotonic() >= deadline:
            return
        headers = {**WS_HEADERS, "session_id": f"soak-ws-{n}-{conversation}"}
        previous: str | None = None
        turn = 0
        while turn < turns and time.monotonic() < deadline:
            try:
                async with http.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=10)) as ws:
                    for _ in range(ws_turns):
                        if turn >= turns or time.monotonic() >= deadline:
                            break
                        frame = {"type": "response.create", "model": MODEL, "store": False,
                                 "include": ["reasoning.encrypted_content"],
                                 "input": [user(f"ws {n} {conversation} {turn}")]}
                        if previous is not None:
                            frame["previous_response_id"] = previous
                        turn += 1
                        previous = await attempt(tally, "websocket", ws_turn(ws, frame))
                        if previous is None:
                            turn = turns  # a new conversation on a new connection
                            break
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                tally.fail("websocket", f"connect: {type(exc).__name__} {exc}")
                await asyncio.sleep(0.2)
                break


async def ws_turn(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> tuple[str | None, str]:
    await ws.send_str(orjson.dumps(frame).decode())
    while True:
        message = await ws.receive(timeout=120)
        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return None, f"socket ended: {message.type.name}"
        event = orjson.loads(message.data)
        if event.get("type") == "response.completed":
            return event["response"]["id"], ""
        if event.get("type") in ("response.failed", "response.incomplete", "error"):
            return None, f"{event.get('type')}: {str(event)[:80]}"


async def attempt(tally: Tally, path: str, call: Any) -> Any:
    """One request's result, counted; None when it failed (after a short pause, so a broken path does
    not spin)."""
    try:
        result, why = await call
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as exc:
        result, why = None, f"{type(exc).__name__} {exc}"
    if result is None:
        tally.fail(path, why)
        await asyncio.sleep(0.2)
        return None
    tally.done[path] += 1
    return result


def slope_mb_per_h(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, MB) samples, as MB per hour."""
    if len(samples) < 2:
        return float("nan")
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in samples) / sum((x - mx) ** 2 for x in xs) * 60


async def sample(pid: int, tally: Tally, interval_s: float, deadline: float,
                 rows: list[tuple[float, float]]) -> None:
    started = time.monotonic()
    done_before = 0
    print(f"{'min':>6} {'plain':>8} {'bridged':>8} {'ws':>8} {'req/s':>7} {'failed':>6} {'RSS MB':>8} {'fds':>5}",
          flush=True)
    while time.monotonic() < deadline - 1:
        await asyncio.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
        minute = (time.monotonic() - started) / 60
        total = sum(tally.done.values())
        rss = rss_mb(pid)
        rows.append((minute, rss))
        print(f"{minute:6.1f} {tally.done['plain']:8d} {tally.done['bridged']:8d} {tally.done['websocket']:8d} "
              f"{(total - done_before) / interval_s:7.0f} {sum(tally.failed.values()):6d} {rss:8.1f} "
              f"{open_fds(pid):5d}", flush=True)
        done_before = total


async def drain(stream: asyncio.StreamReader, errors: Counter[str], keep: Path | None) -> None:
    """Read the child's log to its end (a full pipe would block it), counting error lines; `keep`: a
    file to write it to."""
    with open(keep or os.devnull, "wb") as out:
        while line := await stream.readline():
            out.write(line)
            if b'"level": "error"' in line or b'"level":"error"' in line:
                errors["error"] += 1


async def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0,
                        help="samples up to this minute are left out of the growth figures")
    parser.add_argument("--interval-s", type=float, default=60.0, help="time between samples")
    parser.add_argument("--turns", type=int, default=8, help="turns of a conversation before a new one starts")
    parser.add_argument("--ws-turns", type=int, default=4, help="turns on one WebSocket before reconnecting")
    parser.add_argument("--reply-words", type=int, default=40)
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of " + ",".join(PATHS))
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `codexlb serve` argument")
    parser.add_argument("--serve-log", type=Path, help="write codexlb's log to this file (else it is dropped)")
    args = parser.parse_args()
    paths = args.paths.split(",")
    assert set(paths) <= set(PATHS), paths
    sim, _, proxy, base = await start_sim_and_serve("codexlb-soak-", args.reply_words, *args.serve_arg,
                                                    drain=False)
    assert proxy.stderr is not None
    errors: Counter[str] = Counter()
    drainer = asyncio.create_task(drain(proxy.stderr, errors, args.serve_log))
    tally = Tally()
    rows: list[tuple[float, float]] = []
    print(f"soak: {args.clients} clients ({', '.join(paths)}) for {args.minutes:g} min against codexlb pid "
          f"{proxy.pid}; RSS at start {rss_mb(proxy.pid):.1f} MB, {open_fds(proxy.pid)} fds", flush=True)
    try:
        deadline = time.monotonic() + args.minutes * 60
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            clients = []
            for n in range(args.clients):
                path = paths[n % len(paths)]
                if path == "plain":
                    clients.append(plain(http, base, n, deadline, tally))
                elif path == "bridged":
                    clients.append(bridged(http, base, n, args.turns, deadline, tally))
                else:
                    clients.append(websocket(http, base, n, args.turns, args.ws_turns, deadline, tally))
            await asyncio.gather(sample(proxy.pid, tally, args.interval_s, deadline, rows), *clients)
        await asyncio.sleep(10)
        idle = rss_mb(proxy.pid)
        print(f"done: {dict(tally.done)} requests, {dict(tally.failed)} failed, {errors['error']} error log lines; "
              f"RSS 10 s after the clients stopped {idle:.1f} MB, {open_fds(proxy.pid)} fds")
        for reason, count in tally.reasons.most_common(5):
            print(f"  failure x{count}: {reason}")
        after = [row for row in rows if row[0] >= args.warmup_minutes - 1e-6]
        if after:
            base_rss, last_rss = after[0][1], after[-1][1]
            print(f"growth after warm-up (sample at minute {after[0][0]:.1f} -> minute {after[-1][0]:.1f}; the "
                  f"first {args.warmup_minutes:g} min left out): {last_rss - base_rss:+.1f} MB "
                  f"({(last_rss / base_rss - 1) * 100:+.1f} %); fitted slope {slope_mb_per_h(after):+.1f} MB/h")
    finally:
        for proc in (proxy, sim):
            proc.terminate()
            await proc.wait()
        drainer.cancel()


if __name__ == "__main__":
    asyncio.run(main())
