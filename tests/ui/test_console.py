"""The web console in a real browser (Debian's headless Chromium through chromedriver), against
a real `attachfs serve` with its agent and a stopped guest: log in, create a share, attach it,
see its status change live, detach it; another project sees none of it; a reader sees it but
cannot change it.

Screenshots of the pages are taken on the way (into the test's directory; with
ATTACHFS_SCREENSHOTS=DIR also into DIR: `make screenshots` writes docs/images)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness.serve import Serve

pytestmark = pytest.mark.vm  # the server behind the pages boots (then stops) a real guest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT = 30.0  # s for anything the page shows
LIVE = 8.0  # s: a change must show before the page's own 10 s reload could show it
T = TypeVar("T")


def until(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    """`probe`'s first true answer; the page redraws under it, so an element that went (or is
    not there yet) is "not yet"."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (StaleElementReferenceException, NoSuchElementException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Serve, str]]:
    """serve, and a stopped server of alice's in project p1."""
    state = tmp_path_factory.mktemp("console")
    serve = Serve(state, "[agent]\nstop_timeout = 0.0\n")
    serve.start()
    try:
        r = serve.http.post("/v2.1/servers", json={"server": {
            "name": "web", "flavorRef": "2", "imageRef": "debian-busybox"}})
        assert r.status_code == 202, r.text
        sid = str(r.json()["server"]["id"])
        serve.wait_status(sid, "ACTIVE", 300)
        assert serve.action(sid, {"os-stop": None}).status_code == 202
        serve.wait_status(sid, "SHUTOFF", 120)
        yield serve, sid
    finally:
        serve.cleanup()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make setup)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"console-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a page, not a blank
    if target := os.environ.get("ATTACHFS_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def log_in(driver: Any, serve: Serve, user: str, project: str, role: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(f"{serve.url}/ui/")
    until("the login form", lambda: driver.find_elements(By.NAME, "user"))
    driver.find_element(By.NAME, "user").send_keys(user)
    driver.find_element(By.NAME, "project").send_keys(project)
    Select(driver.find_element(By.NAME, "role")).select_by_value(role)
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    until("the servers page", lambda: "Servers" in driver.find_element(By.TAG_NAME, "h1").text)


def row_status(driver: Any, share_id: str) -> str | None:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'tr[data-share="{share_id}"] .status')
    return rows[0].text if rows else None


def test_a_member_creates_attaches_sees_it_live_and_detaches(
        console: tuple[Serve, str], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    serve, sid = console
    log_in(browser, serve, "alice", "p1", "member")
    until("the server in the list", lambda: browser.find_elements(
        By.CSS_SELECTOR, f'tr[data-server="{sid}"]'))
    # a share, made on the shares page
    name = f"web-{uuid.uuid4().hex[:6]}"
    browser.get(f"{serve.url}/ui/#/shares")
    until("the create form", lambda: browser.find_elements(By.NAME, "size"))
    browser.find_element(By.NAME, "name").send_keys(name)
    browser.find_element(By.CSS_SELECTOR, "form[aria-label='Create a share'] button").click()
    until("the new share listed", lambda: name in browser.find_element(By.TAG_NAME, "main").text)
    entries = serve.http.get("/v2.1/os-filesystem").json()["fs_entries"]
    share_id = next(e["id"] for e in entries if e["name"] == name)
    # attached from the server's page, with a tag and read-only
    browser.get(f"{serve.url}/ui/#/servers/{sid}")
    until("the attach form", lambda: browser.find_elements(By.NAME, "share_id"))
    browser.execute_script("window.stillTheSamePage = true")  # gone if the page reloads
    Select(browser.find_element(By.NAME, "share_id")).select_by_value(share_id)
    browser.find_element(By.NAME, "tag").send_keys("webdata")
    browser.find_element(By.NAME, "read_only").click()
    browser.find_element(By.CSS_SELECTOR, "form[aria-label='Attach a share'] button").click()
    until("the attachment inactive", lambda: row_status(browser, share_id) == "inactive")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-share="{share_id}"]').text
    assert "webdata" in row and "yes" in row  # tag, read-only
    screenshot(browser, tmp_path, "server")
    # live: an attach made elsewhere (the API, another client) shows up on its own
    other, _ = serve.new_share(f"other-{uuid.uuid4().hex[:6]}")
    r = serve.http.post(f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": other}})
    assert r.status_code == 201, r.text
    until("the other attachment, inactive, without a reload",
          lambda: row_status(browser, other) == "inactive", LIVE)
    # what brought it: the event stream (the page says which event it redrew for), not the
    # page's own every-10-s reload
    until("the event named", lambda: "share_attach.end" in browser.find_element(By.ID, "live").text)
    assert browser.execute_script("return window.stillTheSamePage") is True
    # detached from the page
    browser.find_element(By.CSS_SELECTOR, f'tr[data-share="{share_id}"] button').click()
    until("the attachment gone", lambda: row_status(browser, share_id) is None)
    assert serve.mapping(sid, share_id) is None
    assert browser.execute_script("return window.stillTheSamePage") is True
    browser.get(f"{serve.url}/ui/#/servers")
    until("the list", lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-server="{sid}"]'))
    screenshot(browser, tmp_path, "servers")
    browser.get(f"{serve.url}/ui/#/shares")
    until("the shares", lambda: name in browser.find_element(By.TAG_NAME, "main").text)
    screenshot(browser, tmp_path, "shares")


def test_an_error_shows_the_apis_message(console: tuple[Serve, str], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    serve, sid = console
    log_in(browser, serve, "alice", "p1", "member")
    # a share whose tag the server already uses: the API's 409, word for word
    share, _ = serve.new_share(f"dup-{uuid.uuid4().hex[:6]}")
    first, _ = serve.new_share(f"dup-{uuid.uuid4().hex[:6]}")
    assert serve.http.post(f"/v2.1/servers/{sid}/shares", json={
        "share": {"share_id": first, "tag": "same"}}).status_code == 201
    browser.get(f"{serve.url}/ui/#/servers/{sid}")
    until("the share to choose", lambda: browser.find_elements(
        By.CSS_SELECTOR, f'select[name="share_id"] option[value="{share}"]'))
    Select(browser.find_element(By.NAME, "share_id")).select_by_value(share)
    browser.find_element(By.NAME, "tag").send_keys("same")
    browser.find_element(By.CSS_SELECTOR, "form[aria-label='Attach a share'] button").click()
    alert = until("the error", lambda: browser.find_element(By.ID, "error").text)
    assert alert == f"Share '{share}' or tag 'same' already associated to this server."
    assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{first}").status_code == 200


def test_another_project_sees_none_of_it(console: tuple[Serve, str], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    serve, sid = console
    log_in(browser, serve, "bob", "p2", "member")
    until("an empty list", lambda: "None" in browser.find_element(By.TAG_NAME, "tbody").text)
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-server="{sid}"]')
    browser.get(f"{serve.url}/ui/#/servers/{sid}")
    alert = until("the API's answer", lambda: browser.find_element(By.ID, "error").text)
    assert alert == f"Instance {sid} could not be found."
    browser.get(f"{serve.url}/ui/#/shares")
    until("the shares page", lambda: "Shares" in browser.find_element(By.TAG_NAME, "h1").text)
    assert "web-" not in browser.find_element(By.TAG_NAME, "main").text


def test_a_reader_sees_but_has_no_attach_button(console: tuple[Serve, str], browser: Any,
                                                tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    serve, sid = console
    log_in(browser, serve, "carol", "p1", "reader")
    browser.get(f"{serve.url}/ui/#/servers/{sid}")
    until("the server page", lambda: "Attached shares" in browser.find_element(
        By.TAG_NAME, "main").text)
    assert not browser.find_elements(By.NAME, "share_id")  # no attach form
    assert not browser.find_elements(By.XPATH, "//button[text()='Attach']")
    assert not browser.find_elements(By.XPATH, "//button[text()='Detach']")
    assert not browser.find_elements(By.XPATH, "//button[text()='Start']")
    screenshot(browser, tmp_path, "reader")


def test_an_admin_sees_every_server_and_the_hosts(console: tuple[Serve, str], browser: Any,
                                                  tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    serve, sid = console
    log_in(browser, serve, "admin", "admin", "admin")
    row = until("alice's server, with its host", lambda: browser.find_elements(
        By.CSS_SELECTOR, f'tr[data-server="{sid}"]'))[0]
    host = serve.http.get("/v2.1/os-services", headers={"X-Auth-Token": "admin:admin"}).json()
    (service,) = host["services"]
    assert service["host"] in row.text
    browser.find_element(By.LINK_TEXT, "Hosts").click()
    up = until("the host, up", lambda: browser.find_elements(
        By.CSS_SELECTOR, f'tr[data-host="{service["host"]}"] .status'))
    assert up[0].text == "up"
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-host="{service["host"]}"]').text
    assert " of " in row  # its vCPUs and memory in use, of what it has
    screenshot(browser, tmp_path, "hosts")
