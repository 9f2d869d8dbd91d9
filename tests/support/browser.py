"""Debian's headless chromium driven by Playwright, and the console's login form.

One place for what every browser test repeats: launch ``/usr/bin/chromium`` (Playwright
never downloads a browser when given ``executable_path``), open a page with a 30 s
default timeout, log in through ``/login`` and wait to leave it, close the browser even
when the test fails. Playwright is imported only when a page is opened, so a module that
``pytest.importorskip``\\s it still collects without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tools.viewer.chromium import CHROMIUM, CHROMIUM_FLAGS

if TYPE_CHECKING:
    from playwright.sync_api import Page

#: Marks a test (or module, in ``pytestmark``) that needs the browser.
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@contextmanager
def browser_page(
    *,
    width: int = 1400,
    height: int = 900,
    ignore_https_errors: bool = False,
    requests: list[str] | None = None,
    failure_screenshot: Path | None = None,
) -> Iterator[Page]:
    """A page in a fresh headless chromium; the browser is closed on the way out.

    Parameters
    ----------
    ignore_https_errors
        Accept a certificate the browser does not know (a test CA, checked elsewhere).
    requests
        When given, every URL the page requests is appended to it (from the first one).
    failure_screenshot
        Where to save a full-page screenshot when the block raises.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))
        try:
            context = browser.new_context(
                viewport={"width": width, "height": height},
                ignore_https_errors=ignore_https_errors,
            )
            page = context.new_page()
            page.set_default_timeout(30_000)
            if requests is not None:
                page.on("request", lambda request: requests.append(request.url))
            try:
                yield page
            except Exception:
                if failure_screenshot is not None:
                    failure_screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=failure_screenshot, full_page=True)
                raise
        finally:
            browser.close()


def log_in(page: Page, username: str, password: str, *, then: str | None = None) -> None:
    """Fill the login form the page shows and submit it; wait until the browser has left
    ``/login`` (for ``then``, when given: the URL the login should land on)."""
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    if then is not None:
        page.wait_for_url(then)
    else:
        page.wait_for_url(lambda url: "/login" not in url)


@contextmanager
def logged_in_page(
    base_url: str,
    username: str,
    password: str,
    *,
    path: str = "/",
    ignore_https_errors: bool = False,
    requests: list[str] | None = None,
    failure_screenshot: Path | None = None,
) -> Iterator[Page]:
    """A chromium page logged in to the console at ``base_url`` and showing ``path``.

    The page asks for ``path``, is sent to the login form, logs in, and is back on
    ``path`` (the console returns there after the login).
    """
    with browser_page(
        ignore_https_errors=ignore_https_errors,
        requests=requests,
        failure_screenshot=failure_screenshot,
    ) as page:
        target = f"{base_url}{path}"
        page.goto(target)
        log_in(page, username, password, then=target)
        yield page
