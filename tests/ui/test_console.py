"""The web console in a real browser (Debian's headless Chromium through chromedriver), against
a real `attachfs serve` with its agent and a stopped guest: log in, create a share, attach it,
see its status change live, detach it; another project sees none of it; a reader sees it but
cannot change it.

Screenshots of the pages are taken on the way (into the test's directory; with
ATTACHFS_SCREENSHOTS=DIR also into DIR: `make screenshots` writes docs/images)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.serve import Serve
from tests.ui.browser import (
    LIVE,
    choose,
    click,
    log_in,
    row_status,
    screenshot,
    stopped_server,
    text_of,
    type_into,
    until,
)

pytestmark = pytest.mark.vm  # the server behind the pages boots (then stops) a real guest


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Serve, str]]:
    """serve, and a stopped server of alice's in project p1."""
    state = tmp_path_factory.mktemp("console")
    serve = Serve(state, "[agent]\nstop_timeout = 0.0\n")
    serve.start()
    try:
        yield serve, stopped_server(serve, "web")
    finally:
        serve.cleanup()


def test_a_member_creates_attaches_sees_it_live_and_detaches(
        console: tuple[Serve, str], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    serve, sid = console
    log_in(browser, serve, "alice", "p1", "member")
    until("the server in the list", lambda: browser.find_elements(
        By.CSS_SELECTOR, f'tr[data-server="{sid}"]'))
    # a share, made on the shares page
    name = f"web-{uuid.uuid4().hex[:6]}"
    browser.get(f"{serve.url}/ui/#/shares")
    until("the create form", lambda: browser.find_elements(By.NAME, "size"))
    type_into(browser, "name", name)
    click(browser, "form[aria-label='Create a share'] button", "the form's button")
    until("the new share listed", lambda: name in browser.find_element(By.TAG_NAME, "main").text)
    entries = serve.http.get("/v2.1/os-filesystem").json()["fs_entries"]
    share_id = next(e["id"] for e in entries if e["name"] == name)
    # attached from the server's page, with a tag and read-only
    browser.get(f"{serve.url}/ui/#/servers/{sid}")
    until("the attach form", lambda: browser.find_elements(By.NAME, "share_id"))
    browser.execute_script("window.stillTheSamePage = true")  # gone if the page reloads
    choose(browser, "share_id", share_id)
    type_into(browser, "tag", "webdata")
    browser.find_element(By.NAME, "read_only").click()
    click(browser, "form[aria-label='Attach a share'] button", "the form's button")
    until("the attachment inactive", lambda: row_status(browser, share_id) == "inactive")
    row = text_of(browser, f'tr[data-share="{share_id}"]') or ""
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
    click(browser, f'tr[data-share="{share_id}"] button', "the detach button")
    until("the attachment gone", lambda: row_status(browser, share_id) is None)
    assert serve.mapping(sid, share_id) is None
    assert browser.execute_script("return window.stillTheSamePage") is True
    browser.get(f"{serve.url}/ui/#/servers")
    until("the list", lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-server="{sid}"]'))
    screenshot(browser, tmp_path, "servers")
    browser.get(f"{serve.url}/ui/#/shares")
    shown = until("the shares", lambda: (t := browser.find_element(By.TAG_NAME, "main").text)
                  and name in t and t)
    assert "null" not in shown.split()  # a part left out is left out, not written "null"
    screenshot(browser, tmp_path, "shares")


def test_an_error_shows_the_apis_message(console: tuple[Serve, str], browser: Any) -> None:
    from selenium.webdriver.common.by import By

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
    choose(browser, "share_id", share)
    type_into(browser, "tag", "same")
    click(browser, "form[aria-label='Attach a share'] button", "the form's button")
    alert = until("the error", lambda: browser.find_element(By.ID, "error").text)
    assert alert == f"Share '{share}' or tag 'same' already associated to this server."
    assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{first}").status_code == 200


def test_a_live_update_keeps_what_the_user_is_typing(console: tuple[Serve, str],
                                                     browser: Any) -> None:
    from selenium.webdriver.common.by import By

    serve, sid = console
    log_in(browser, serve, "alice", "p1", "member")
    mine, _ = serve.new_share(f"typing-{uuid.uuid4().hex[:6]}")
    browser.get(f"{serve.url}/ui/#/servers/{sid}")
    until("the share to choose", lambda: browser.find_elements(
        By.CSS_SELECTOR, f'select[name="share_id"] option[value="{mine}"]'))
    choose(browser, "share_id", mine)
    type_into(browser, "tag", "half-typ")
    # an attach by another client redraws the page under the user's half-filled form
    other, _ = serve.new_share(f"typing-{uuid.uuid4().hex[:6]}")
    assert serve.http.post(f"/v2.1/servers/{sid}/shares",
                           json={"share": {"share_id": other}}).status_code == 201
    until("the redraws, up to the attachment inactive",
          lambda: row_status(browser, other) == "inactive", LIVE)

    def kept() -> bool:
        tag = browser.find_element(By.NAME, "tag")
        return (tag.get_attribute("value") == "half-typ"
                and browser.switch_to.active_element == tag  # the focus stays there too
                and browser.find_element(By.NAME, "share_id").get_attribute("value") == mine)
    until("the half-filled form as the user left it", kept, 5)
    assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{other}").status_code == 200


def test_a_member_starts_and_stops_the_server_from_the_keyboard(console: tuple[Serve, str],
                                                                browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    serve, sid = console
    log_in(browser, serve, "alice", "p1", "member")
    browser.get(f"{serve.url}/ui/#/servers/{sid}")
    until("the server page, stopped", lambda: "web SHUTOFF" in browser.find_element(
        By.TAG_NAME, "h1").text)
    # every field has its label, every table its name: what a screen reader announces
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('main input, main select')]"
        ".filter((el) => !el.closest('label')).length")
    assert unlabelled == 0
    assert not browser.find_elements(By.CSS_SELECTOR, "main table:not([aria-label])")

    def press(label: str) -> None:  # focus by Tab from the page's top, then Enter
        body = browser.find_element(By.TAG_NAME, "body")
        body.click()
        for _ in range(40):
            browser.switch_to.active_element.send_keys(Keys.TAB)
            if browser.switch_to.active_element.text == label:
                browser.switch_to.active_element.send_keys(Keys.ENTER)
                return
        raise AssertionError(f"no {label} button reached with Tab")
    until("the Start button reached and pressed", lambda: press("Start") or True)
    until("ACTIVE, shown", lambda: "ACTIVE" in browser.find_element(By.TAG_NAME, "h1").text, 120)
    until("the Stop button reached and pressed", lambda: press("Stop") or True)
    until("SHUTOFF, shown", lambda: "SHUTOFF" in browser.find_element(By.TAG_NAME, "h1").text,
          120)
    actions = text_of(browser, "table[aria-label='Instance actions']") or ""
    assert "start alice" in actions and "stop alice" in actions, actions
    serve.wait_status(sid, "SHUTOFF", 120)


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
    host = serve.http.get("/v2.1/os-services", headers={"X-Auth-Token": "admin:admin"}).json()
    (service,) = host["services"]
    row = until("alice's server, with its host",
                lambda: text_of(browser, f'tr[data-server="{sid}"]'))
    assert service["host"] in row
    browser.find_element(By.LINK_TEXT, "Hosts").click()
    up = until("the host, up", lambda: text_of(
        browser, f'tr[data-host="{service["host"]}"] .status'))
    assert up == "up"
    row = text_of(browser, f'tr[data-host="{service["host"]}"]') or ""
    assert " of " in row  # its vCPUs and memory in use, of what it has
    screenshot(browser, tmp_path, "hosts")


def test_the_agents_failed_tries_show_on_the_server_page(console: tuple[Serve, str],
                                                         browser: Any) -> None:
    """What the agent records of a server step that fails and is retried (the server body's
    attachfs:attempts and attachfs:last_error) is said on the server's page."""
    serve, sid = console
    with sqlite3.connect(serve.state_dir / "attachfs.db") as db:
        db.execute("UPDATE servers SET attempts = 2, last_error = ? WHERE uuid = ?",
                   ("start_guest failed: libvirtd is not answering", sid))
    try:
        log_in(browser, serve, "carol", "p1", "reader")
        browser.get(f"{serve.url}/ui/#/servers/{sid}")
        said = until("the failed tries said", lambda: text_of(browser, "main p.fault"))
        assert said == ("The agent's last 2 tries failed and are retried: "
                        "start_guest failed: libvirtd is not answering")
    finally:
        with sqlite3.connect(serve.state_dir / "attachfs.db") as db:
            db.execute("UPDATE servers SET attempts = 0, last_error = NULL WHERE uuid = ?",
                       (sid,))
