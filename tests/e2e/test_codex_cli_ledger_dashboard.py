"""The issue's acceptance on the dashboard: the 15-turn Codex CLI session with faults of
`test_codex_cli_ledger`, then the Conversations tab in a headless Chromium shows it (its key, turns, requests and
recoveries) with a chart point per request at the input tokens the sim reported, and each recovery marked. A
screenshot per transport goes to the test's tmp dir, and to $CODEXLB_SCREENSHOT_DIR when that is set."""

from __future__ import annotations

import pytest

from tests.dashboard.conversation_page import read_conversation, screenshot_paths
from tests.dashboard.test_browser import page  # noqa: F401 (the fixture: codexlb, an admin password, Chromium)
from tests.e2e.test_codex_cli_ledger import TURNS, run_session


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_the_session_on_the_dashboard(codex_bin, page, http, tmp_path, transport):  # noqa: F811
    browser, proxy = page
    conversation, seen, shown_records = await run_session(codex_bin, tmp_path, proxy, http, transport)
    shots = screenshot_paths(tmp_path, f"conversation-cli-{transport}.png")
    shown = await browser(lambda _d: read_conversation(browser, conversation, len(seen), shots))
    cells = shown["cells"]
    assert cells[0] == conversation and cells[1] == "e2e", cells
    assert cells[3:5] == [str(TURNS), str(len(seen))], cells
    assert cells[8].startswith("4 (+"), cells
    assert shown["points"] == [s.input_tokens for s in seen], shown_records
    assert shown["recoveries"] == [i for i, s in enumerate(seen) if s.recoveries], shown_records
    assert all(shot.stat().st_size > 0 for shot in shots)
