"""The Conversations tab as a test reads it in Chromium: log in, open the tab, click one conversation, and take
its row, its chart (a point per request with the input tokens it stands for, the recoveries marked, the bars of
uncached input) and its requests; a screenshot goes to the test's tmp dir, and to $CODEXLB_SCREENSHOT_DIR when
that is set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.dashboard.test_browser import PASSWORD, By, Page, ec


def screenshot_paths(tmp_path: Path, name: str) -> list[Path]:
    paths = [tmp_path / name]
    if os.environ.get("CODEXLB_SCREENSHOT_DIR"):
        paths.append(Path(os.environ["CODEXLB_SCREENSHOT_DIR"]) / name)
    return paths


def read_conversation(browser: Page, conversation: str, requests: int, shots: list[Path]) -> dict[str, Any]:
    """Runs in the browser's thread (`await browser(lambda d: read_conversation(...))`)."""
    d = browser.driver
    d.get(browser.base + "/")
    browser.wait(ec.visibility_of_element_located((By.ID, "login")))
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    browser.wait(ec.visibility_of_element_located((By.ID, "tabs")))
    d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='conversations']").click()
    row = f"#conversation-rows tr[data-conversation='{conversation}']"
    browser.wait(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    cells = [td.text for td in d.find_elements(By.CSS_SELECTOR, f"{row} td")]
    d.find_element(By.CSS_SELECTOR, row).click()
    points = browser.wait(lambda d: (found := d.find_elements(By.CSS_SELECTOR, "#conversation-chart .point"))
                          and len(found) == requests and found)
    seen = {
        # Conversation, key, account, turns, requests, tokens, sent / upstream, saved, recoveries, last seen.
        "cells": cells,
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
    return seen
