"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium through
Debian's chromedriver (nothing is downloaded), against `protocoop serve` on each database.

A treasurer signs in, sees the verdict and indicators of the API's report, sorts and searches
the members, opens a member whose statement closes at the API's balance, and signs out; an
auditor of another community gets 404; a page without a session sends the browser to sign in.
Every page passes axe-core (vendored from npm, `vendor/axe-core`) with no serious or critical
violation, and is photographed at 360 and 1440 px into `test-output/screenshots/`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tests.support.databases import IN_CI
from tests.support.live_server import LiveServer, admin_call

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path(os.environ.get("PROTOCOOP_TEST_OUTPUT", "test-output")) / "screenshots"
WIDTHS = (360, 1440)


@pytest.fixture
def driver() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = "Chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1440,1000",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def seed(server: LiveServer) -> dict[str, str]:
    """riverside with six members and some trade, hillside beside it; a treasurer key for
    riverside and an auditor key for hillside."""
    unit = {"code": "EUR", "name": "euro", "scale": 2}
    for community in ("riverside", "hillside"):
        admin_call(
            server,
            "POST",
            "/v1/communities",
            json={
                "id": community,
                "name": community.title(),
                "unit": unit,
                "default_lower_limit": -10000,
            },
        )
    for member in ("alice", "bob", "carol", "dave", "erin", "frank"):
        admin_call(
            server,
            "POST",
            "/v1/communities/riverside/members",
            json={"id": member, "name": member.title()},
        )
    for provider, receiver, amount in (
        ("alice", "bob", 2500),
        ("bob", "carol", 1200),
        ("carol", "alice", 700),
        ("dave", "erin", 9000),
        ("alice", "frank", 150),
    ):
        admin_call(
            server,
            "POST",
            "/v1/communities/riverside/exchanges",
            json={
                "provider": provider,
                "receiver": receiver,
                "amount": amount,
                "description": f"{provider} helps {receiver}",
            },
        )
    tokens = {}
    for name, role, community in (
        ("treasurer", "treasurer", "riverside"),
        ("outsider", "auditor", "hillside"),
    ):
        created = admin_call(
            server, "POST", "/v1/api-keys", json={"role": role, "community": community}
        )
        tokens[name] = created.json()["token"]
    return tokens


def api(server: LiveServer, path: str) -> Any:
    return admin_call(server, "GET", path).json()


def sign_in(driver: WebDriver, server: LiveServer, token: str) -> None:
    driver.get(f"{server.base_url}/ui/sign-in")
    driver.find_element(By.ID, "token").send_keys(token)
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form.sign-in button"))


def accessible(driver: WebDriver, page: str) -> None:
    """axe-core finds no serious or critical violation on the current page."""
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document).then(r => done(JSON.stringify(r.violations)))"
        ".catch(e => done(JSON.stringify("
        "[{id: 'axe-error', impact: 'critical', help: String(e)}])));"
    )
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']}"
        for v in json.loads(result)
        if v.get("impact") in ("serious", "critical")
    ]
    assert not serious, f"{page}: {serious}"


def photograph(driver: WebDriver, name: str) -> None:
    """The current page at each width, whole (Chromium's full-page capture through CDP)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        driver.set_window_size(width, 1000)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": int(height), "deviceScaleFactor": 1, "mobile": width < 600},
        )
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{name} is {overflow} px wider than a {width} px screen"
        path = SCREENSHOTS / f"{name}-{width}.png"
        driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    driver.set_window_size(1440, 1000)


def follow(driver: WebDriver, element: WebElement, *, submit: bool = False) -> None:
    """Click a link or button (or submit a field's form) and wait for the next page."""
    page = driver.find_element(By.TAG_NAME, "html")
    if submit:
        element.submit()
    else:
        element.click()
    WebDriverWait(driver, 15).until(lambda _: _replaced(page))


def _replaced(page: WebElement) -> bool:
    """Whether the page `page` was the root of has been replaced by the next one. Mid-navigation
    Chrome reports the old root either as stale or as "Node with given id does not belong to the
    document" (a plain WebDriverException, which selenium's `staleness_of` lets through as an
    error): both mean it is gone."""
    try:
        page.is_enabled()
    except WebDriverException:  # StaleElementReferenceException is one too
        return True
    return False


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text).strip()


def test_a_treasurer_reads_the_dashboard_in_a_browser(
    live_server: LiveServer, driver: WebDriver, backend: str
) -> None:
    server = live_server
    tokens = seed(server)
    base = server.base_url

    # A page without a session sends the browser to sign in, and back after.
    driver.get(f"{base}/ui/communities/riverside/members")
    assert "/ui/sign-in" in driver.current_url
    accessible(driver, "sign-in")
    photograph(driver, f"sign-in-{backend}")
    driver.find_element(By.ID, "token").send_keys(tokens["treasurer"])
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form.sign-in button"))
    assert driver.current_url == f"{base}/ui/communities/riverside/members"

    # The overview: the API's verdict and indicators.
    driver.get(f"{base}/ui/communities/riverside")
    report = api(server, "/v1/communities/riverside/mutuality")
    heading = driver.find_element(By.ID, "verdict-heading").text
    assert heading == ("Mutuality holds" if report["holds"] else "Mutuality does not hold")
    indicators = report["indicators"]
    assert text(driver, "indicator-volume") == f"{indicators['volume'] / 100:,.2f} EUR"
    assert text(driver, "indicator-exchanges") == str(indicators["exchanges"])
    assert text(driver, "indicator-index") == f"{indicators['mutuality_index']:.2f}"
    accessible(driver, "overview")
    photograph(driver, f"overview-{backend}")

    # Members: sort by balance (highest first, then lowest first), search.
    follow(driver, driver.find_element(By.LINK_TEXT, "Members"))
    follow(driver, driver.find_element(By.PARTIAL_LINK_TEXT, "Balance"))  # ascending
    follow(driver, driver.find_element(By.PARTIAL_LINK_TEXT, "Balance"))  # descending
    balances = {
        b["account"]: b["balance"]
        for b in api(server, "/v1/communities/riverside/balances")["items"]
        if not b["account"].startswith("@")
    }
    rows = driver.find_elements(By.CSS_SELECTOR, "table.members tbody th a")
    shown = [row.text for row in rows]
    assert shown == sorted(balances, key=lambda m: (-balances[m], m))
    accessible(driver, "members")
    photograph(driver, f"members-{backend}")
    search = driver.find_element(By.ID, "q")
    search.clear()
    search.send_keys("car")
    follow(driver, search, submit=True)
    assert [r.text for r in driver.find_elements(By.CSS_SELECTOR, "table.members tbody th a")] == [
        "carol"
    ]

    # A member: the statement closes at the API's balance.
    follow(driver, driver.find_element(By.LINK_TEXT, "carol"))
    balance = api(server, "/v1/communities/riverside/members/carol/balance")["balance"]
    assert text(driver, "closing-balance") == f"{balance / 100:,.2f} EUR"
    accessible(driver, "member")
    photograph(driver, f"member-{backend}")

    # The exchanges, and one exchange's detail.
    follow(driver, driver.find_element(By.LINK_TEXT, "Exchanges"))
    accessible(driver, "exchanges")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "table.exchanges tbody a"))
    assert "Entries" in driver.page_source
    accessible(driver, "exchange")

    # Signing out ends the session.
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form.sign-out button"))
    assert "/ui/sign-in" in driver.current_url
    driver.get(f"{base}/ui/communities/riverside")
    assert "/ui/sign-in" in driver.current_url

    # An auditor of another community: 404 for this one.
    sign_in(driver, server, tokens["outsider"])
    driver.get(f"{base}/ui/communities/riverside")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Not found"
    status = driver.execute_script(
        "return performance.getEntriesByType('navigation')[0].responseStatus"
    )
    assert status == 404
