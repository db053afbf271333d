"""What the HTTP bridge saves, and what recovery keeps: a Codex CLI session of `--turns` `exec` turns
with a tool call each (two model requests a turn), input bytes per model request with the bridge and
without over HTTP, and over WebSocket, in three scenarios: calm; the upstream socket dropped between
requests and before `response.created`; backend state lost on half of the anchored requests and the
conversation's account exhausted halfway. Also: failed turns, faults fired, the recovery decisions
taken, and the sim's continuity verdicts (every answer should go on from the true history).

Run: .venv/bin/python tests/bench/bench_bridge.py [--turns 10]
Needs the real Codex CLI: `CODEXLB_CODEX_BIN`, or the copy the e2e tests install into `.tools/`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from codexlb.app import create_app  # noqa: E402
from codexlb.config import Settings  # noqa: E402
from codexlb.services import ROSTER  # noqa: E402
from codexlb.sim.backend import SimConfig  # noqa: E402
from codexlb.sim.faults import Fault  # noqa: E402
from codexlb.sim.running import running_sim  # noqa: E402
from codexlb.upstream.state import UPSTREAM  # noqa: E402
from tests.accounts.conftest import login_of  # noqa: E402
from tests.e2e.test_codex_cli_recovery import FAULTS  # noqa: E402
from tests.e2e.test_codex_cli_sim import TOOL_PROMPT, CodexHome  # noqa: E402

# What goes wrong upstream in each scenario (sim faults on its WebSockets).
SCENARIOS = {
    "calm": [],
    "sockets dropped": FAULTS,
    "state lost, account exhausted halfway": [{"action": "drop_state", "anchored": True, "share": 0.5}],
}


@dataclass
class Result:
    sizes: list[int]  # upstream input bytes of each answered model request (prewarms aside)
    failed: int       # CLI runs that did not end well
    faults: int       # times a fault fired
    recoveries: dict[str, int]
    continuity: dict[str, int]  # the sim's verdicts on the answered requests


async def session(codex_bin: Path, turns: int, bridge: bool, scenario: str, websockets: bool = False) -> Result:
    async with running_sim(SimConfig(accounts=3)) as sim:
        root = Path(tempfile.mkdtemp(prefix="codexlb-bench-"))
        settings = Settings(data_dir=root / "data", port=0, upstream_base_url=sim.upstream_base_url,
                            auth_base_url=sim.url, usage_poll_interval_s=0, http_bridge=bridge)
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            for account in sim.backend.accounts:
                await app[ROSTER].add_login(login_of(account))
            for fault in SCENARIOS[scenario]:
                sim.backend.faults.add(Fault.from_json({"transport": "ws", "times": None, **fault}))
            port = runner.addresses[0][1]
            (root / "work").mkdir()
            codex = CodexHome(codex_bin, root / "work", sim, websockets=websockets,
                              base_url=f"http://127.0.0.1:{port}/backend-api/codex", api_key="sk-bench")
            failed = 0
            for turn in range(turns):
                if scenario.endswith("halfway") and turn == turns // 2:
                    home = next(a for a in sim.backend.accounts if a.account_id == sim.backend.records[-1].account_id)
                    home.primary.used_tokens = home.primary.limit_tokens
                args = ("exec", "--skip-git-repo-check", TOOL_PROMPT) if turn == 0 else (
                    "exec", "--skip-git-repo-check", "resume", "--last", TOOL_PROMPT)
                failed += (await codex.run(*args)).rc != 0
            answered = [r for r in sim.backend.records if r.outcome == "completed" and r.generate]
            return Result([r.input_bytes for r in answered], failed,
                          sum(fault.fired for fault in sim.backend.faults.list()),
                          dict(app[UPSTREAM].recoveries), dict(Counter(r.continuity for r in answered)))
        finally:
            await runner.cleanup()


def codex_binary() -> Path:
    explicit = os.environ.get("CODEXLB_CODEX_BIN")
    binary = Path(explicit) if explicit else REPO / ".tools" / "node_modules" / ".bin" / "codex"
    if not binary.exists():
        sys.exit(f"no Codex CLI at {binary}: set CODEXLB_CODEX_BIN or run the e2e tests once (they install it)")
    return binary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10, help="`exec` turns (two model requests each)")
    args = parser.parse_args()
    binary = codex_binary()
    print(f"Codex CLI, {args.turns} turns with a tool call each; input bytes per model request upstream")
    for scenario in SCENARIOS:
        print(f"  {scenario}:")
        rows = {"HTTP, no bridge": await session(binary, args.turns, False, scenario),
                "HTTP, bridge": await session(binary, args.turns, True, scenario),
                "WebSocket": await session(binary, args.turns, True, scenario, websockets=True)}
        for name, r in rows.items():
            print(f"    {name:16s} {sum(r.sizes) / len(r.sizes):8.0f} B/request  {sum(r.sizes):9,d} B in "
                  f"{len(r.sizes)} requests  {r.failed} failed turns  {r.faults:2d} faults  continuity {r.continuity}")
            if r.recoveries:
                print(f"    {'':16s} recoveries {r.recoveries}")


if __name__ == "__main__":
    asyncio.run(main())
