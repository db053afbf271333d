"""The real Codex CLI (pinned in conftest.py) against the sim directly, over HTTP/SSE and over WebSocket.

A two-turn session: turn 1 asks for a tool call (the sim answers `exec_command`, the CLI runs
`echo hi` and sends the output back in a second request), turn 2 is `exec resume --last` in a new
process. The sim's records then show what the CLI sent (shared/protocol/codex-cli.md §4):
full history on every HTTP request; on WS a prewarm per process, then requests anchored on
`previous_response_id` that carry only the new items.

The sim runs in the test's event loop, so the CLI is started with asyncio's subprocess API (a
blocking subprocess.run would starve the server), and every run is bounded: with the server
gone the CLI retries forever (§8.2).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from codexlb.sim.backend import SimConfig
from codexlb.sim.running import RunningSim, running_sim

MODEL = "gpt-5.5"
RUN_TIMEOUT_S = 120.0
KILL_WAIT_S = 10.0
TOOL_PROMPT = 'call:exec_command {"cmd":"echo hi"}'
RESUME_PROMPT = "again"
# What the sim says (codexlb/sim/responses.py) after a function_call_output, and to a plain message.
TOOL_REPLY = re.compile(r"Hello from the codexlb simulator\. The tool returned (\d+) characters\.")
RESUME_REPLY = f"Hello from the codexlb simulator. You said: {RESUME_PROMPT}"
# The CLI's transcript on stderr: the command it ran for the tool call, and that command's output.
TOOL_RAN = re.compile(r"echo hi' in .*\n\s*succeeded in \d+ms:\s*\nhi\n")
SESSION_ID = re.compile(r"^session id: (\S+)$", re.M)
# Signs that the CLI did not like a model answer: a retry, a transport fallback, a dropped stream, a fatal error.
TROUBLE = ("Reconnecting", "Falling back from WebSockets", "stream disconnected", "ERROR: ",
           "failed to refresh available models")
# Known and harmless: the sim has no /backend-api/ps/mcp, and the CLI tolerates its 404 (protocol §8.5).
TOLERATED = ("Unknown route: POST /backend-api/ps/mcp",)


@dataclass(frozen=True, slots=True)
class Run:
    args: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"codex {' '.join(self.args)} -> rc {self.rc}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class CodexHome:
    """A CODEX_HOME and a HOME under tmp_path, logged in as one sim account, with the sim as provider."""

    def __init__(self, binary: Path, root: Path, sim: RunningSim, *, websockets: bool,
                 base_url: str | None = None, api_key: str | None = None) -> None:
        """Logged in as the sim's first account (ChatGPT mode), or with `api_key` (API-key mode, for a
        proxy); `base_url` defaults to the sim's own Codex endpoint."""
        self.binary = binary
        self.cwd = root
        self.home = root / "home"
        self.codex_home = root / "codex-home"
        self.home.mkdir()
        self.codex_home.mkdir()
        lines = [
            f'model = "{MODEL}"',
            'model_provider = "lb"',
            # The ChatGPT-side calls (plugins, MCP, workspace checks) go to the sim too, not to the internet.
            f'chatgpt_base_url = "{sim.url}/backend-api/"',
            "",
            "[model_providers.lb]",
            'name = "lb"',
            f'base_url = "{base_url or sim.codex_base_url}"',
            'wire_api = "responses"',
        ]
        if api_key is None:
            (self.codex_home / "auth.json").write_text(json.dumps(sim.backend.accounts[0].auth_json()))
            lines.append("requires_openai_auth = true")
        else:
            lines.append('env_key = "CODEXLB_TEST_KEY"')
        if websockets:
            lines.append("supports_websockets = true")
        (self.codex_home / "config.toml").write_text("\n".join(lines) + "\n")
        # Minimal and deterministic: nothing from the developer's shell but PATH (no OPENAI_*, no proxies).
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.home),
            "CODEX_HOME": str(self.codex_home),
            "NO_COLOR": "1",
            **({"CODEXLB_TEST_KEY": api_key} if api_key is not None else {}),
        }

    async def run(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> Run:
        proc = await asyncio.create_subprocess_exec(
            str(self.binary), *args, cwd=self.cwd, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills the tools it started too
        )
        out, err = bytearray(), bytearray()

        async def pump(stream: asyncio.StreamReader, into: bytearray) -> None:
            while chunk := await stream.read(65536):
                into.extend(chunk)

        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(pump(proc.stdout, out), pump(proc.stderr, err))
        try:
            async with asyncio.timeout(timeout):
                await readers
                rc = await proc.wait()
        except BaseException as exc:
            _kill_group(proc.pid)
            readers.cancel()
            await asyncio.wait_for(proc.wait(), KILL_WAIT_S)
            if isinstance(exc, TimeoutError):
                pytest.fail(f"codex {' '.join(args)} did not finish within {timeout:.0f} s\n"
                            f"--- stdout\n{out.decode(errors='replace')}\n--- stderr\n{err.decode(errors='replace')}",
                            pytrace=False)
            raise
        return Run(args, rc, out.decode(errors="replace"), err.decode(errors="replace"))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _check_turn(run: Run, expected_stdout: re.Pattern[str] | str) -> str:
    """rc 0, exactly the sim's final text on stdout, no retry or fallback; returns the session id."""
    assert run.rc == 0, run.describe()
    final = run.stdout.strip()
    if isinstance(expected_stdout, str):
        assert final == expected_stdout, run.describe()
    else:
        assert expected_stdout.fullmatch(final), run.describe()
    trouble = [line for line in run.stderr.splitlines()
               if any(sign in line for sign in TROUBLE) and not any(known in line for known in TOLERATED)]
    assert trouble == [], run.describe()
    session = SESSION_ID.findall(run.stderr)
    assert len(session) == 1, run.describe()
    return session[0]


def _check_completed(records: list[dict], account_id: str) -> None:
    for record in records:
        assert record["account_id"] == account_id, record
        assert record["outcome"] == "completed" and record["status"] == 200, record
        assert record["error_code"] is None and record["faults"] == [], record
        assert record["response_id"] and record["response_id"].startswith("resp_"), record
        assert record["usage"] is not None and record["usage"]["total_tokens"] > 0, record


def _show(records: list[dict]) -> str:
    keys = ("seq", "transport", "kind", "generate", "n_input", "input_bytes", "previous_response_id",
            "response_id", "outcome", "continuity")
    return "\n".join(str({k: r[k] for k in keys}) for r in records)


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_two_turn_session_with_a_tool_call(codex_bin, tmp_path, transport):
    async with running_sim(SimConfig(accounts=1)) as sim:
        codex = CodexHome(codex_bin, tmp_path, sim, websockets=transport == "ws")
        account_id = sim.backend.accounts[0].account_id

        first = await codex.run("exec", "--skip-git-repo-check", TOOL_PROMPT)
        session = _check_turn(first, TOOL_REPLY)
        assert TOOL_RAN.search(first.stderr), first.describe()
        # "The tool returned N characters": N is the length of the function_call_output the CLI sent,
        # which wraps the command's output ("hi\n") in its own header.
        assert int(TOOL_REPLY.fullmatch(first.stdout.strip()).group(1)) > len("hi\n")
        turn1 = sim.backend.records_view()

        second = await codex.run("exec", "--skip-git-repo-check", "resume", "--last", RESUME_PROMPT)
        assert _check_turn(second, RESUME_REPLY) == session, "resume --last did not continue turn 1's session"
        turn2 = sim.backend.records_view()[len(turn1):]

    everything = turn1 + turn2
    shown = _show(everything)
    _check_completed(everything, account_id)
    assert {r["transport"] for r in everything} == {transport}, shown

    if transport == "http":
        # Turn 1: the prompt, then the tool follow-up; turn 2: one request. No prewarm, no anchor, ever.
        assert len(turn1) == 2 and len(turn2) == 1, shown
        assert all(r["kind"] == "turn" and r["generate"] for r in everything), shown
        assert all(r["previous_response_id"] is None for r in everything), shown
        prompt, follow_up, resumed = everything
        # Full history each time: + the sim's reasoning item, the function_call and its output;
        # then + reasoning, the assistant message and the new user message.
        assert follow_up["n_input"] == prompt["n_input"] + 3, shown
        assert resumed["n_input"] == follow_up["n_input"] + 3, shown
        assert prompt["input_bytes"] < follow_up["input_bytes"] < resumed["input_bytes"], shown
        # Same prompt_cache_key (the session id) across both processes: the prefix was cached.
        assert follow_up["usage"]["input_tokens_details"]["cached_tokens"] > 0, shown
        assert resumed["usage"]["input_tokens_details"]["cached_tokens"] > 0, shown
    else:
        # One socket per process, each opened with a prewarm (generate false, the base instructions only).
        assert len(turn1) == 3 and len(turn2) == 2, shown
        prewarm1, prompt, follow_up = turn1
        prewarm2, resumed = turn2
        for prewarm in (prewarm1, prewarm2):
            assert prewarm["kind"] == "prewarm" and prewarm["generate"] is False, shown
            assert prewarm["n_input"] == 1 and prewarm["previous_response_id"] is None, shown
            assert prewarm["usage"]["output_tokens"] == 0, shown
        for request in (prompt, follow_up, resumed):
            assert request["kind"] == "turn" and request["generate"] is True, shown
        # Incremental: each request is anchored on the previous response of its own socket.
        assert prompt["previous_response_id"] == prewarm1["response_id"], shown
        assert follow_up["previous_response_id"] == prompt["response_id"], shown
        assert follow_up["n_input"] == 1, shown  # only the function_call_output
        assert resumed["previous_response_id"] == prewarm2["response_id"], shown
        # The new process rebuilt the history from its rollout and sent all of it but the base
        # instructions: turn 1's inputs and outputs (reasoning, function_call, reasoning, message)
        # and the new user message.
        assert resumed["n_input"] == prompt["n_input"] + 2 + follow_up["n_input"] + 2 + 1, shown
