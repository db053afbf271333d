"""The Conversations tab in a real headless Chromium: a conversation of several turns goes through codexlb's HTTP
bridge to the sim while upstream forgets it once (a lost anchor) and drops the socket once mid-request; the tab
lists it with its key, turns and recoveries, and its chart has one point per request at the input tokens the
sim reported, the recoveries marked, and the cliff where the anchor was lost. A screenshot of the page goes to
the test's tmp dir, and to $CODEXLB_SCREENSHOT_DIR when that is set."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from codexlb.services import KEYS, STORE
from tests.bridge.test_http_bridge import Conversation, completed
from tests.dashboard.test_browser import PASSWORD, By, ec, page  # noqa: F401 (page: the fixture)
from tests.simclient import add_fault
from tests.simledger import sim_requests

TURNS = 8
SESSION = "conv-chart"
DROP_BEFORE, LOST_BEFORE = 2, 5  # turns (by index) before which upstream forgets the conversation, loses the socket


async def test_a_conversation_and_its_chart(page, http, sim, tmp_path):  # noqa: F811
    browser, proxy = page
    secret, _ = await proxy.app[KEYS].create("chart")
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
    shots = [tmp_path / "conversations.png"]
    if os.environ.get("CODEXLB_SCREENSHOT_DIR"):
        shots.append(Path(os.environ["CODEXLB_SCREENSHOT_DIR"]) / "conversations.png")

    def look(d):
        d.get(browser.base + "/")
        browser.wait(ec.visibility_of_element_located((By.ID, "login")))
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.CSS_SELECTOR, "#login-form button").click()
        browser.wait(ec.visibility_of_element_located((By.ID, "tabs")))
        d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='conversations']").click()
        row = f"#conversation-rows tr[data-conversation='{SESSION}']"
        browser.wait(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
        cells = [td.text for td in d.find_elements(By.CSS_SELECTOR, f"{row} td")]
        d.find_element(By.CSS_SELECTOR, row).click()
        points = browser.wait(lambda d: (found := d.find_elements(By.CSS_SELECTOR, "#conversation-chart .point"))
                              and len(found) == TURNS and found)
        chart = {
            "points": [int(p.get_attribute("data-input-tokens")) for p in points],
            "recoveries": [int(g.get_attribute("data-index"))
                           for g in d.find_elements(By.CSS_SELECTOR, "#conversation-chart .recovery")],
            "uncached": [float(r.get_attribute("height"))
                         for r in d.find_elements(By.CSS_SELECTOR, "#conversation-chart .uncached")],
            "requests": [tr.text for tr in d.find_elements(By.CSS_SELECTOR, "#conversation-requests tr")],
        }
        for shot in shots:
            shot.parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(str(shot))
        # The keys tab: a key with no limits set shows none (a dash), before and after limits exist.
        d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='keys']").click()
        key_row = "#key-rows tr[data-name='chart'] td[data-field]"
        fields = browser.wait(lambda d: {td.get_attribute("data-field"): td.text
                                         for td in d.find_elements(By.CSS_SELECTOR, key_row)})
        return cells, chart, fields

    cells, chart, fields = await browser(look)
    # Conversation, key, account, turns, requests, tokens, sent / upstream, saved, recoveries, last seen.
    alias = next(a.alias for a in proxy.roster.all() if a.id == seen[0].answered["account_id"])
    assert cells[:5] == [SESSION, "chart", alias, str(TURNS), str(TURNS)], cells
    assert cells[8].startswith("2 (+"), cells
    # One point per request, at the input tokens upstream reported for it.
    assert chart["points"] == [s.input_tokens for s in seen]
    assert chart["recoveries"] == [i for i, s in enumerate(seen) if s.recoveries]
    # The cliff: where the anchor was lost, the model saw far more it had not cached than on any anchored turn.
    [cliff] = [i for i, s in enumerate(seen) if s.lost_anchor]
    anchored = [h for i, h in enumerate(chart["uncached"]) if i > 0 and not seen[i].recoveries]
    assert chart["uncached"][cliff] > 2 * max(anchored), chart
    assert len(chart["requests"]) == TURNS and "whole_send" in chart["requests"][cliff], chart
    assert all(shot.stat().st_size > 0 for shot in shots)
    assert fields == dict.fromkeys(("rpm", "tokens_5h", "tokens_day", "tokens_week", "models", "expires_at", "note"),
                                   "—")
