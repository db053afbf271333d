"""Key limits on the dashboard's keys tab, in a real headless Chromium: the operator sets a key's limits in the
form (PATCH /api/keys/{id}), sees them with their use once the key has served a request, and clears one."""

from __future__ import annotations

import pytest

from codexlb.services import KEYS
from tests.dashboard.test_browser import PASSWORD, By, ec, page  # noqa: F401 (page: the fixture)
from tests.proxy.test_codex_route import post
from tests.simclient import body, user

FORM = "#limits-form"


def _has_key_updates(app) -> bool:
    return any(r.method == "PATCH" and r.resource.canonical == "/api/keys/{key}" for r in app.router.routes())


async def test_set_see_and_clear_key_limits(page, http):  # noqa: F811
    browser, proxy = page
    if not _has_key_updates(proxy.app):
        pytest.skip("PATCH /api/keys/{key} (the key limits of issue 22) is not in this build")
    secret, record = await proxy.app[KEYS].create("team")

    def log_in(d):
        d.get(browser.base + "/")
        browser.wait(ec.visibility_of_element_located((By.ID, "login")))
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.CSS_SELECTOR, "#login-form button").click()
        browser.wait(ec.visibility_of_element_located((By.ID, "tabs")))

    def fields(d):
        cells = "#key-rows tr[data-name='team'] td[data-field]"
        return {td.get_attribute("data-field"): td.text for td in d.find_elements(By.CSS_SELECTOR, cells)}

    def set_limits(d):
        log_in(d)
        d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='keys']").click()
        browser.wait(ec.element_to_be_clickable((By.CSS_SELECTOR, "#key-rows tr[data-name='team'] .edit-limits")))
        d.find_element(By.CSS_SELECTOR, "#key-rows tr[data-name='team'] .edit-limits").click()
        for name, value in (("rpm", "60"), ("tokens_day", "100000"), ("models", "gpt-5*, o4-mini"),
                            ("note", "shared by the team")):
            d.find_element(By.CSS_SELECTOR, f"{FORM} input[name='{name}']").send_keys(value)
        d.find_element(By.CSS_SELECTOR, f"{FORM} button[type='submit']").click()
        browser.wait(ec.invisibility_of_element_located((By.CSS_SELECTOR, FORM)))
        return browser.wait(lambda d: (got := fields(d)) and got["rpm"] != "—" and got)

    shown = await browser(set_limits)
    [stored] = [r for r in await proxy.app[KEYS].list() if r.id == record.id]
    assert (stored.rpm, stored.tokens_day, list(stored.models), stored.note) == (
        60, 100000, ["gpt-5*", "o4-mini"], "shared by the team")  # for real, not only on the page
    assert shown["models"] == "gpt-5*, o4-mini" and shown["note"] == "shared by the team", shown
    assert shown["tokens_5h"] == shown["tokens_week"] == shown["expires_at"] == "—", shown

    # One request with the key: its use shows against the limits.
    resp, _ = await post(http, proxy, body(user("hello")), {"Authorization": f"Bearer {secret}"})
    assert resp.status == 200

    def see_use_then_clear(d):
        d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='accounts']").click()
        d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='keys']").click()
        used = browser.wait(lambda d: (got := fields(d)) and got["rpm"].startswith("1 / 60") and got)
        browser.shot("8-key-limits")
        d.find_element(By.CSS_SELECTOR, "#key-rows tr[data-name='team'] .edit-limits").click()
        d.find_element(By.CSS_SELECTOR, f"{FORM} input[name='rpm']").clear()
        d.find_element(By.CSS_SELECTOR, f"{FORM} button[type='submit']").click()
        browser.wait(ec.invisibility_of_element_located((By.CSS_SELECTOR, FORM)))
        return used, browser.wait(lambda d: (got := fields(d)) and got["rpm"] == "—" and got)

    used, cleared = await browser(see_use_then_clear)
    assert used["tokens_day"].endswith("/ 100K"), used
    [stored] = [r for r in await proxy.app[KEYS].list() if r.id == record.id]
    assert stored.rpm is None and stored.tokens_day == 100000
    assert cleared["tokens_day"] == used["tokens_day"], cleared
