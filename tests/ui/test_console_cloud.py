"""The web console in a small real cloud: `attachfs serve` with Keystone auth and its shares
from a real Manila (keystone mode, its dummy NFS backend) through the catalog. In a real
browser: a wrong password is refused with Keystone's answer shown; a project member logs in
with their password, sees their Manila share on the shares page, attaches it to their stopped
server (the agent grants this host's rule in Manila: `inactive`, shown live) and detaches it
(the rule goes); a member of another project sees neither."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.cloud import manila_client_user, serve_config
from harness.keystone import PASSWORD, Keystone
from harness.manila import KeystoneManila
from harness.process import wait_for
from tests.ui.browser import (
    LIVE,
    choose,
    click,
    row_status,
    screenshot,
    stopped_server,
    text_of,
    type_into,
    until,
)
from tests.vm.harness import Serve, console_on_failure, serving

pytestmark = [pytest.mark.vm, pytest.mark.manila, pytest.mark.keystone]
HOST = "webcloudhost"


@dataclass
class WebCloud:
    keystone: Keystone
    manila: KeystoneManila  # as Keystone's admin: Manila's own view of rules
    serve: Serve
    server: str  # a_member's stopped server in project A
    share: dict[str, Any]  # a_member's NFS share in Manila


@pytest.fixture(scope="module")
def cloud(keystone: Keystone, manila_keystone: KeystoneManila) -> Iterator[WebCloud]:
    config = serve_config(keystone, HOST, agent__stop_timeout=0.0)
    with manila_client_user(keystone), serving(config=config, prefix="webcloud-") as serve:
        serve.http.headers["X-Auth-Token"] = keystone.token("a_member")
        share = manila_keystone.create_share(f"web-{uuid.uuid4().hex[:6]}",
                                             token=keystone.token("a_member"))
        try:
            with console_on_failure(serve):
                sid = stopped_server(serve, "webcloud")
            yield WebCloud(keystone, manila_keystone, serve, sid, share)
        finally:
            manila_keystone.request("DELETE", f"/shares/{share['id']}")


def keystone_login(driver: Any, serve: Serve, user: str, password: str, project: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{serve.url}/ui/")
    until("the Keystone login form", lambda: driver.find_elements(By.NAME, "password"))
    driver.find_element(By.NAME, "username").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.NAME, "project").send_keys(project)
    driver.find_element(By.CSS_SELECTOR, "form button").click()


def test_a_wrong_password_shows_keystones_refusal(cloud: WebCloud, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    keystone_login(browser, cloud.serve, "a_member", "not-the-password", "A")
    alert = until("the refusal", lambda: browser.find_element(By.ID, "error").text)
    assert "not" in alert.lower() or "auth" in alert.lower(), alert
    assert browser.find_elements(By.NAME, "password")  # still on the login form


def test_a_member_attaches_a_manila_share_and_sees_it_live(cloud: WebCloud, browser: Any,
                                                          tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    serve, sid, share_id = cloud.serve, cloud.server, cloud.share["id"]
    keystone_login(browser, serve, "a_member", PASSWORD, "A")
    until("the server in the list", lambda: browser.find_elements(
        By.CSS_SELECTOR, f'tr[data-server="{sid}"]'))
    # the shares page: the Manila share, from the share service, with its size
    browser.get(f"{serve.url}/ui/#/shares")
    row = until("the Manila share listed", lambda: text_of(browser, f'tr[data-share="{share_id}"]'))
    assert cloud.share["name"] in row and "NFS" in row and "1 GiB" in row, row
    screenshot(browser, tmp_path, "shares-manila")
    # attached from the server's page; the agent grants this host's rule in Manila
    browser.get(f"{serve.url}/ui/#/servers/{sid}")
    until("the Manila share to choose", lambda: browser.find_elements(
        By.CSS_SELECTOR, f'select[name="share_id"] option[value="{share_id}"]'))
    browser.execute_script("window.stillTheSamePage = true")  # gone if the page reloads
    choose(browser, "share_id", share_id)
    type_into(browser, "tag", "manila")
    click(browser, "form[aria-label='Attach a share'] button", "the form's button")
    until("the attachment inactive", lambda: row_status(browser, share_id) == "inactive", 60)
    assert browser.execute_script("return window.stillTheSamePage") is True
    (rule,) = cloud.manila.rules(share_id)
    assert (rule["access_type"], rule["state"], rule["metadata"]) == (
        "ip", "active", {"attachfs_host": HOST}), rule
    # the shares page says where it is attached
    browser.get(f"{serve.url}/ui/#/shares")
    row = until("where it is attached", lambda: (t := text_of(
        browser, f'tr[data-share="{share_id}"]')) and sid[:8] in t and t)
    assert "inactive" in row, row
    # detached from the server's page: the row goes live, the rule goes in Manila
    browser.get(f"{serve.url}/ui/#/servers/{sid}")
    click(browser, f'tr[data-share="{share_id}"] button', "the detach button")
    until("the attachment gone", lambda: row_status(browser, share_id) is None, LIVE * 4)
    wait_for("the rule gone in Manila", lambda: cloud.manila.rules(share_id) == [], 60)


def test_another_projects_member_sees_neither_share_nor_server(cloud: WebCloud,
                                                               browser: Any) -> None:
    from selenium.webdriver.common.by import By

    keystone_login(browser, cloud.serve, "b_member", PASSWORD, "B")
    until("the servers page", lambda: "Servers" in browser.find_element(By.TAG_NAME, "h1").text)
    until("an empty list", lambda: "None" in browser.find_element(By.TAG_NAME, "tbody").text)
    browser.get(f"{cloud.serve.url}/ui/#/shares")
    until("the shares page", lambda: "Shares" in browser.find_element(By.TAG_NAME, "h1").text)
    main = until("the shares table", lambda: browser.find_element(By.TAG_NAME, "main").text)
    assert cloud.share["id"] not in browser.page_source and cloud.share["name"] not in main
