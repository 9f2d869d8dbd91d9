"""Debian's chromium as the viewer tool and the browser tests launch it (no Playwright
import here, so the tests can name it without loading Playwright)."""

CHROMIUM = "/usr/bin/chromium"
#: Headless, no sandbox (root in CI), software rendering, nothing that phones home.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
