"""The Conversations tab in a real headless Chromium: a conversation of several turns goes through codexlb's HTTP
bridge to the sim while upstream forgets it once (a lost anchor) and drops the socket once mid-request; the tab
lists it with its key, turns and recoveries, and its chart has one point per request at the input tokens the
sim reported, the recoveries marked, and the cliff where the anchor was lost. The keys tab shows a key with no
limits as such. A screenshot of the conversation goes to the test's tmp dir (and $CODEXLB_SCREENSHOT_DIR)."""

from __future__ import annotations

import orjson

from codexlb.services import KEYS, STORE
from tests.bridge.test_http_bridge import Conversation, completed
from tests.dashboard.conversation_page import read_conversation, screenshot_paths
from tests.dashboard.test_browser import By, page  # noqa: F401 (page: the fixture)
from tests.simclient import add_fault
from tests.simledger import sim_requests

TURNS = 8
SESSION = "conv-chart"
DROP_BEFORE, LOST_BEFORE = 2, 5  # turns (by index) before which upstream forgets the conversation, loses the socket
LIMITS = ("rpm", "tokens_5h", "tokens_day", "tokens_week", "models", "expires_at", "note")


async def test_a_conversation_and_its_chart(page, http, sim, tmp_path):  # noqa: F811
    browser, proxy = page
    secret, _ = await proxy.app[KEYS].create("chart")
    await proxy.app[KEYS].create("spare")
    talk = Conversation(http, proxy, {"session_id": SESSION, "Authorization": f"Bearer {secret}"})
    for turn in range(TURNS):
        if turn == DROP_BEFORE:
            async with http.post(f"{sim.url}/__sim/state/drop", json={}) as resp:
                assert resp.status == 200
        if turn == LOST_BEFORE:
            await add_fault(http, sim, transport="ws", action="close", after_events=0, anchored=True, times=1)
        talk.headers["x-codex-turn-metadata"] = orjson.dumps({"turn_id": f"turn-{turn}"}).decode()
        assert completed(*await talk.say(f"turn {turn}"))
    await proxy.app[STORE].flush_usage()
    async with http.get(f"{sim.url}/__sim/faults") as resp:
        faults = (await resp.json())["faults"]
    seen = sim_requests(sim.backend.records_view(), faults)
    assert len(seen) == TURNS and [s.recoveries for s in seen].count(1) == 2, seen
    shots = screenshot_paths(tmp_path, "conversation-bridge.png")

    def look(d):
        shown = read_conversation(browser, SESSION, TURNS, shots)
        # Filtered by key: another key has no conversations; an unknown one is named in the error.
        other, rows = "#conversation-filters input[name='key']", "#conversation-rows tr"
        for name, expect in (("spare", 0), ("chart", 1)):
            d.find_element(By.CSS_SELECTOR, other).clear()
            d.find_element(By.CSS_SELECTOR, other).send_keys(name)
            d.find_element(By.CSS_SELECTOR, "#conversation-filters button").click()
            browser.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == expect)
        d.find_element(By.CSS_SELECTOR, other).send_keys("-nobody")
        d.find_element(By.CSS_SELECTOR, "#conversation-filters button").click()
        shown["unknown_key"] = browser.wait(lambda d: d.find_element(By.ID, "error").text)
        # The keys tab: a key with no limits set shows none (a dash), before and after limits exist.
        d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='keys']").click()
        key_row = "#key-rows tr[data-name='chart'] td[data-field]"
        fields = browser.wait(lambda d: {td.get_attribute("data-field"): td.text
                                         for td in d.find_elements(By.CSS_SELECTOR, key_row)})
        return shown, fields

    shown, fields = await browser(look)
    cells = shown["cells"]
    alias = next(a.alias for a in proxy.roster.all() if a.id == seen[0].answered["account_id"])
    assert cells[:5] == [SESSION, "chart", alias, str(TURNS), str(TURNS)], cells
    assert cells[8].startswith("2 (+"), cells
    # One point per request, at the input tokens upstream reported for it.
    assert shown["points"] == [s.input_tokens for s in seen]
    assert shown["recoveries"] == [i for i, s in enumerate(seen) if s.recoveries]
    # The cliff: where the anchor was lost, the model saw far more it had not cached than on any anchored turn.
    [cliff] = [i for i, s in enumerate(seen) if s.lost_anchor]
    anchored = [h for i, h in enumerate(shown["uncached"]) if i > 0 and not seen[i].recoveries]
    assert shown["uncached"][cliff] > 2 * max(anchored), shown
    assert len(shown["requests"]) == TURNS and "whole_send" in shown["requests"][cliff], shown
    assert all(shot.stat().st_size > 0 for shot in shots)
    assert fields == dict.fromkeys(LIMITS, "—")
    assert "chart-nobody" in shown["unknown_key"], shown["unknown_key"]
