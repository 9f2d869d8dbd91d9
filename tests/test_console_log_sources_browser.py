"""The console's Log and Sources & pulls pages in Debian's chromium (no outside requests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.browser import browser_page, log_in, logged_in_page, needs_chromium
from tests.test_console_browser import ARTIFACTS, add_user
from tools.net import wait_until
from tools.node_process import PROJECT_ROOT, NodeProcess

PASSWORD = "console-password-1"
pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow, needs_chromium]


def test_log_page_shows_and_filters_recent_warnings(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    node = NodeProcess({"workers": {"device": "cpu"}}, workdir=tmp_path / "node")
    with node:
        add_user(node, "admin", "admin")
        requested: list[str] = []
        with browser_page(requests=requested) as page:
            page.goto(f"{node.url}/log")
            # A failed login is a warning the node logs (the user name, no patient data).
            page.fill("input[name=username]", "mallory")
            page.fill("input[name=password]", "wrong-password-1")
            page.click("button[type=submit]")
            page.wait_for_selector("text=Wrong user name or password")
            log_in(page, "admin", PASSWORD)
            page.goto(f"{node.url}/log")
            row = page.locator("#log-table tbody tr", has_text="login failed")
            assert row.count() == 1
            assert "WARNING" in row.inner_text() and "node.api.web" in row.inner_text()
            page.screenshot(path=ARTIFACTS / "log-page.png")

            page.fill("input[name=text]", "no such words")
            page.click("form.filters button[type=submit]")
            page.wait_for_selector("p.empty:has-text('no such words')")
            page.fill("input[name=text]", "LOGIN FAILED")
            page.select_option("select[name=level]", "ERROR")
            page.click("form.filters button[type=submit]")
            page.wait_for_selector("p.empty")
            assert page.locator("#log-table").count() == 0
            page.select_option("select[name=level]", "WARNING")
            page.click("form.filters button[type=submit]")
            page.wait_for_selector("#log-table tbody tr:has-text('login failed')")

            api = page.request.get(f"{node.url}/api/log?level=WARNING&text=login")
            assert api.ok
            (entry,) = api.json()
            assert (entry["level"], entry["logger"]) == ("WARNING", "node.api.web")
            assert page.request.get(f"{node.url}/api/log?level=INFO").status == 422
    outside = [url for url in requested if not url.startswith(node.url)]
    assert outside == []


TOKEN = "sources-page-token-0123456789"


def test_sources_page_lists_sources_and_recent_pulls(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    study = "1.2.826.0.1.3680043.8.498.1"
    node = NodeProcess(
        {
            "workers": {"device": "cpu"},
            "dicomweb": {"tokens": [{"name": "tests", "token": TOKEN}]},
            "sources": {
                "archive": {"kind": "dicomweb", "url": f"http://127.0.0.1:{closed}/dicom-web"},
                "modality-pacs": {
                    "kind": "dimse",
                    "ae_title": "PACS1",
                    "host": "127.0.0.1",
                    "port": closed,
                },
            },
        },
        workdir=tmp_path / "node",
    )
    with node:
        add_user(node, "viewer", "viewer")
        requested: list[str] = []
        with browser_page(requests=requested) as page:
            queued = page.request.post(
                f"{node.url}/api/pull",
                data={"source": "archive", "study_uid": study},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert queued.status == 202, queued.text()
            pull_id = queued.json()["id"]
            # A pull queued by the CLI is claimed by the running node's puller.
            cli = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "node",
                    "pull",
                    "modality-pacs",
                    "--study",
                    study,
                    "--json",
                    "--config",
                    str(node.config_path),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=PROJECT_ROOT,
            )
            assert cli.returncode == 0, cli.stderr
            cli_id = json.loads(cli.stdout)["id"]

            def cli_pull_state() -> str:
                answer = page.request.get(
                    f"{node.url}/api/pull/{cli_id}",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                return str(answer.json()["state"])

            wait_until(lambda: cli_pull_state() != "queued", timeout=30)
            page.goto(f"{node.url}/sources")
            log_in(page, "viewer", PASSWORD, then=f"{node.url}/sources")
            sources = page.locator("#sources-table tbody tr")
            assert sources.count() == 2
            assert "dicomweb" in sources.nth(0).inner_text()
            assert f"http://127.0.0.1:{closed}/dicom-web" in sources.nth(0).inner_text()
            assert f"PACS1@127.0.0.1:{closed}" in sources.nth(1).inner_text()
            assert page.locator("#pulls-table tbody tr").count() == 2
            row = page.locator("#pulls-table tbody tr").nth(1)
            text = row.inner_text()
            assert text.startswith(str(pull_id)) and "archive" in text and study in text
            assert any(s in text for s in ("queued", "running", "failed"))
            page.screenshot(path=ARTIFACTS / "sources-page.png")
    outside = [url for url in requested if not url.startswith(node.url)]
    assert outside == []


def test_storage_page_shows_disk_usage_and_retention_deletions(tmp_path: Path) -> None:
    """The Storage page: spool/results/free against the watermarks, the policy, and what
    retention deleted (here one series, 40 days after its job finished)."""
    import time

    from node.config import RetentionSettings
    from node.orchestration.retention_run import run_pass
    from node.state.db import Database
    from tests.test_retention import _series

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    node = NodeProcess({"workers": {"device": "cpu"}}, workdir=tmp_path / "node")
    node.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(node.data_dir / "state.sqlite3")
    now = time.time()
    _series(
        db,
        node.data_dir,
        "1.2.826.0.1.3680043.8.498.77",
        job_state="done",
        finished=now - 40 * 86400,
    )
    settings = RetentionSettings(
        spool_days=7, results_days=30, failed_days=30, high_watermark_mb=100
    )
    (deleted,) = run_pass(db, settings, now=now, free=None, dry_run=False)
    assert deleted["bytes"] == 2500
    db.close()
    with node:
        add_user(node)
        requested: list[str] = []
        with logged_in_page(
            node.url, "admin", PASSWORD, path="/storage", requests=requested
        ) as page:
            disk = page.locator("#disk-table").inner_text().lower()
            assert "spool" in disk and "results" in disk and "high watermark" in disk
            assert "0xa700" in disk
            row = page.locator("#deletions-table tbody tr", has_text="1.2.826.0.1.3680043.8.498.77")
            assert row.count() == 1
            text = row.inner_text()
            assert "age" in text and "spool and results" in text and "2.4 KiB" in text
            assert "7 days" in page.locator("#policy").inner_text()
            assert page.locator("nav a[href='/storage']").count() == 1
            page.screenshot(path=ARTIFACTS / "storage-page.png")
        assert all(url.startswith(node.url) for url in requested), requested
