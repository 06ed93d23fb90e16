"""What the browser tests share: Debian's headless Chromium through chromedriver (Selenium),
waiting for what a page shows, screenshots, the noauth login form."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from harness.serve import Serve

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


def click(driver: Any, css: str, what: str) -> None:
    """Click the element `css` selects; the page may redraw between finding and clicking (an
    event arrived), so a vanished element is found again."""
    from selenium.webdriver.common.by import By

    until(what, lambda: driver.find_element(By.CSS_SELECTOR, css).click() or True)


def choose(driver: Any, name: str, value: str) -> None:
    """Pick `value` in the select named `name` (found again if the page redrew under it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    until(f"{value} chosen in {name}", lambda: Select(driver.find_element(By.NAME, name))
          .select_by_value(value) or True)


def type_into(driver: Any, name: str, text: str) -> None:
    """`text` in the field named `name`, whole (typed again if the page redrew meanwhile)."""
    from selenium.webdriver.common.by import By

    def typed() -> bool:
        field = driver.find_element(By.NAME, name)
        field.clear()
        field.send_keys(text)
        return bool(field.get_attribute("value") == text)
    until(f"{text!r} typed into {name}", typed)


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


def text_of(driver: Any, css: str) -> str | None:
    """The text `css` selects, read in one step in the page: the page redraws live, so an
    element found first and read after may already be gone (stale)."""
    text = driver.execute_script(
        "const el = document.querySelector(arguments[0]); return el ? el.innerText : null", css)
    if text is None:
        return None
    # as WebElement.text has it: a table's cells one space apart, no blank ends
    return "\n".join(" ".join(line.split()) for line in str(text).strip().splitlines())


def row_status(driver: Any, share_id: str) -> str | None:
    return text_of(driver, f'tr[data-share="{share_id}"] .status')


def stopped_server(serve: Serve, name: str) -> str:
    """A server of the caller's that booted and was stopped (the pages' subject): its id."""
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": name, "flavorRef": "2", "imageRef": "debian-busybox"}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    serve.wait_status(sid, "ACTIVE", 300)
    assert serve.action(sid, {"os-stop": None}).status_code == 202
    serve.wait_status(sid, "SHUTOFF", 120)
    return sid
