"""The dashboard in a real headless Chromium against a real codexlb and sim: log in, see the sim's
accounts, pause one, create and revoke an API key, find a failed request in the log. Screenshots of
each page go to `.artifacts/dashboard/` (CI keeps them).

Selenium's calls block, so they run in a thread while the server runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from codexlb.services import KEYS, STORE
from tests.proxy.conftest import start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import add_fault, body, user

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts" / "dashboard"
PASSWORD = "correct horse battery"
WAIT_S = 10

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _chrome():
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("no Chromium and chromedriver on PATH (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


class Page:
    """The browser, driven from the loop: each step runs in a thread."""

    def __init__(self, driver, base: str) -> None:
        self.driver, self.base = driver, base
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    async def __call__(self, step):
        return await asyncio.to_thread(step, self.driver)

    def wait(self, condition):
        # The page re-renders tables as answers come in: an element found a moment ago may be gone.
        return WebDriverWait(self.driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,)).until(
            condition)

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


@pytest.fixture
async def page(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim)
    async with http.post(f"{proxy.url}/api/admin/password", json={"password": PASSWORD}) as resp:
        assert resp.status == 200
    driver = await asyncio.to_thread(_chrome)
    try:
        yield Page(driver, proxy.url), proxy
    finally:
        await asyncio.to_thread(driver.quit)


async def test_operator_walkthrough(page, http, sim):
    browser, proxy = page
    # One answered and one refused request, in the log before the operator looks.
    assert (await post(http, proxy, body(user("hello"))))[0].status == 200
    await add_fault(http, sim, action="status", status=400, code="invalid_value", times=1)
    assert (await post(http, proxy, body(user("refused"))))[0].status == 400
    await proxy.app[STORE].flush_usage()

    def log_in(d):
        d.get(browser.base + "/")
        browser.wait(ec.visibility_of_element_located((By.ID, "login")))
        browser.shot("1-login")
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.CSS_SELECTOR, "#login-form button").click()
        browser.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#account-rows tr")) == 3)
        browser.shot("2-accounts")
        return [tr.get_attribute("data-alias") for tr in d.find_elements(By.CSS_SELECTOR, "#account-rows tr")]

    assert sorted(await browser(log_in)) == ["sim1", "sim2", "sim3"]

    def pause_sim1(d):
        d.find_element(By.CSS_SELECTOR, "#account-rows tr[data-alias='sim1'] button").click()
        browser.wait(ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#account-rows tr[data-alias='sim1'] .status"), "paused"))
        browser.shot("3-account-paused")

    await browser(pause_sim1)
    assert next(a for a in proxy.roster.all() if a.alias == "sim1").status.value == "paused"

    def create_and_revoke_key(d):
        d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='keys']").click()
        d.find_element(By.ID, "key-name").send_keys("ci")
        d.find_element(By.CSS_SELECTOR, "#key-form button").click()
        browser.wait(ec.visibility_of_element_located((By.ID, "new-key")))
        shown = d.find_element(By.ID, "new-key").text
        browser.wait(ec.presence_of_element_located((By.CSS_SELECTOR, "#key-rows tr[data-name='ci'] button")))
        browser.shot("4-key-created")
        d.find_element(By.CSS_SELECTOR, "#key-rows tr[data-name='ci'] button").click()
        browser.wait(ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#key-rows tr[data-name='ci'] .status"), "revoked"))
        browser.shot("5-key-revoked")
        return shown

    shown = await browser(create_and_revoke_key)
    assert "sk-clb-" in shown
    [record] = await proxy.app[KEYS].list()
    assert record.name == "ci" and record.status == "revoked"  # for real, not only on the page

    def find_the_failure(d):
        d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='requests']").click()
        browser.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#request-rows tr")) >= 2)
        d.find_element(By.CSS_SELECTOR, "#request-filters input[name='status']").send_keys("400")
        d.find_element(By.CSS_SELECTOR, "#request-filters button").click()
        # Filtered: only the failed request is left.
        rows = browser.wait(lambda d: (texts := [tr.text for tr in d.find_elements(By.CSS_SELECTOR, "#request-rows tr")])
                            and all("invalid_value" in t for t in texts) and texts)
        browser.shot("6-failed-request")
        d.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='usage']").click()
        browser.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#usage-chart rect"))
        browser.shot("7-usage")
        return rows

    failed = await browser(find_the_failure)
    assert len(failed) == 1 and "400" in failed[0] and "invalid_value" in failed[0]
