"""The web console in Debian's chromium (Playwright): the path a PACS admin takes.

Log in, write a rule, test it against a series the node received, save it, send
more series with storescu and watch the jobs, filter the skipped one (too few
slices for the routine) and retry it, find both
changes in the audit log. Screenshots go to ``test-artifacts/console/``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pydicom
import pytest

from tests.support.admin import add_console_user
from tests.support.browser import browser_page, log_in, logged_in_page, needs_chromium
from tests.support.dcmtk import storescu
from tools.net import wait_until
from tools.node_process import PROJECT_ROOT, NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "console"
PASSWORD = "console-password-1"

pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    needs_chromium,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="needs dcmtk storescu"),
]


def series(root: Path, name: str, **kwargs) -> list[Path]:
    datasets, _ = make_chest_ct(**kwargs)
    return write_series(datasets, root / name)


def test_admin_writes_tests_and_uses_a_rule(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    first = series(
        tmp_path,
        "first",
        n_slices=24,
        rows=96,
        columns=96,
        seed=21,
        series_description="Chest CT 1.0 B31f",
    )
    second = series(
        tmp_path,
        "second",
        n_slices=24,
        rows=96,
        columns=96,
        seed=22,
        series_description="Chest CT 1.0 B31f",
    )
    short = series(
        tmp_path,
        "short",
        n_slices=8,
        rows=64,
        columns=64,
        seed=23,
        series_description="Chest scout",
        include_lungs=False,
    )
    first_uid = str(pydicom.dcmread(first[0], stop_before_pixels=True).SeriesInstanceUID)

    node = NodeProcess({"workers": {"device": "cpu"}}, workdir=tmp_path / "node")
    with node:
        add_user(node, "admin", "admin")
        storescu(node.dicom_port, first)  # no rule yet: stored, not processed

        with browser_page(failure_screenshot=ARTIFACTS / "failure.png") as page:
            page.goto(f"{node.url}/rules")
            assert "/login" in page.url
            page.screenshot(path=ARTIFACTS / "01-login.png")
            log_in(page, "admin", PASSWORD, then=f"{node.url}/rules")

            # Write a rule; live validation points at the broken field first.
            page.fill("#rule-form [name=name]", "chest-lungs")
            page.select_option("#rule-form [name=plugin]", "ct_lungs")
            page.fill("#rule-form [name=match]", "Modality: CT\nSeriesDescriptin: x\n")
            page.wait_for_selector(".field-error[data-field=match]:has-text('not a DICOM')")
            page.screenshot(path=ARTIFACTS / "02-rule-invalid.png")
            page.fill(
                "#rule-form [name=match]",
                "Modality: CT\nSeriesDescription:\n  regex: (?i)chest\nImagesInAcquisition:\n"
                "  exists: false\n",
            )
            page.wait_for_selector("#validation.ok")

            # Test it, unsaved, against the series the node already holds.
            page.select_option("#test-series", first_uid)
            page.click("#run-test")
            page.wait_for_selector("#test-table tr.candidate")
            row = page.locator("#test-table tr.candidate")
            assert "fires" in row.inner_text()
            assert "chest-lungs" in page.locator("#test-result .alert").inner_text()
            page.click("#run-replay")
            page.wait_for_selector("#replay-table")
            assert "+ chest-lungs" in page.locator("#replay-table").inner_text()
            page.locator("#test-panel").scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "03-rule-tested.png", full_page=True)

            page.click("#save-rule")
            page.wait_for_url(f"{node.url}/rules/*")
            assert "v1 by admin" in page.locator("#rule-order").inner_text()

            # The saved rule applies to the next series at once.
            storescu(node.dicom_port, second + short)
            page.goto(f"{node.url}/jobs")
            for state in ("done", "skipped"):
                wait_until(
                    lambda state=state: page.evaluate(
                        f"async () => (await (await fetch('/api/jobs?state={state}')).json())"
                        ".length"
                    ),
                    180,
                    message=f"a {state} job",
                )
            page.reload()
            table = page.locator("#jobs-table").inner_text()
            assert "done" in table and "skipped" in table and "at least 20" in table
            assert "failed" not in table  # too few slices is a skip, not a failure
            page.screenshot(path=ARTIFACTS / "04-jobs.png", full_page=True)

            # Filter the skipped jobs, retry the one from its page.
            page.select_option("form.filters select[name=state]", "skipped")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**/jobs?state=skipped*")
            states = page.locator("#jobs-table .state").all_inner_texts()
            assert states == ["skipped"], states
            page.click("#jobs-table tr:has(.state-skipped) a")
            page.wait_for_url(f"{node.url}/jobs/*")
            job_url = page.url
            page.click("button[data-job-action=retry]")
            page.wait_for_selector("#toast.show:has-text('retried')")
            page.wait_for_url(job_url)
            page.wait_for_selector(".timeline li.ev-job-retried")
            page.screenshot(path=ARTIFACTS / "05-job-retried.png", full_page=True)

            page.goto(f"{node.url}/audit")
            audit = page.locator("#audit-table").inner_text()
            assert "job.retry" in audit and "rule.create" in audit and "admin" in audit
            page.screenshot(path=ARTIFACTS / "06-audit.png", full_page=True)

            for name, path in (
                ("07-dashboard", "/"),
                ("08-studies", "/studies"),
                ("09-plugins", "/plugins"),
                ("10-destinations", "/destinations"),
            ):
                page.goto(f"{node.url}{path}")
                page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)

            # The API reference draws its operations from the locally served Swagger UI.
            page.goto(f"{node.url}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert any("/api/jobs" in p for p in paths) and len(paths) > 20
            page.screenshot(path=ARTIFACTS / "11-api-docs.png", full_page=True)


def add_user(node: NodeProcess, name: str = "admin", role: str = "admin") -> None:
    """Add a console user with the test password through the console script."""
    add_console_user(node, name, PASSWORD, role)


def test_new_rule_form_is_quiet_until_typed_and_destination_form_keeps_day_budget(
    tmp_path: Path,
) -> None:
    """Issue 11 item 15: the empty 'New rule' form showed a validation error before anything
    was typed. And item 13: a destination saved from the console gets the day-long retry
    budget (the form used to send 5 attempts)."""
    node = NodeProcess({"workers": {"device": "cpu"}}, workdir=tmp_path / "node")
    with node:
        add_user(node)
        failure = tmp_path / "failure.png"
        with logged_in_page(node.url, "admin", PASSWORD, failure_screenshot=failure) as page:
            page.goto(f"{node.url}/rules")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(1000)  # past the validation's debounce
            errors = page.locator("#rule-form .field-error").all_inner_texts()
            assert all(not text.strip() for text in errors), errors
            assert page.locator("#validation").inner_text().strip() == ""
            assert "bad" not in (page.locator("#validation").get_attribute("class") or "")
            # Typing validates: a name makes the default form valid, clearing it is an error.
            page.fill("#rule-form [name=name]", "chest")
            page.wait_for_selector("#validation.ok")
            page.fill("#rule-form [name=name]", "")
            page.wait_for_selector("#validation.bad")
            assert page.locator(".field-error[data-field=name]").inner_text().strip()

            page.goto(f"{node.url}/destinations")
            page.fill("#destination-form [name=name]", "pacs")
            page.fill("#destination-form [name=ae_title]", "ORTHANC")
            page.fill("#destination-form [name=host]", "127.0.0.1")
            page.fill("#destination-form [name=port]", "4242")
            page.click("#destination-form button[type=submit]")
            page.wait_for_selector("#destinations-table tr[data-destination=pacs]")
            saved = page.evaluate("async () => (await fetch('/api/destinations/pacs')).json()")
            assert saved["max_attempts"] is None
            assert saved["give_up_after_seconds"] == 86400
            assert saved["max_backoff_seconds"] == 600
            retries = page.locator("#destinations-table tr[data-destination=pacs]").inner_text()
            assert "for 24 h" in retries


def test_destination_form_offers_every_registered_kind(tmp_path: Path) -> None:
    """The kind selector lists the kinds of ``node.export.senders.SENDERS`` and shows only
    the chosen kind's fields: a DICOMweb destination is saved from the form, and an edit
    keeps its kind and the stored password it was shown as a placeholder."""
    node = NodeProcess({"workers": {"device": "cpu"}}, workdir=tmp_path / "node")
    with node:
        add_user(node)
        get = "async (n) => (await fetch('/api/destinations/' + n)).json()"
        failure = tmp_path / "failure.png"
        with logged_in_page(node.url, "admin", PASSWORD, failure_screenshot=failure) as page:
            page.goto(f"{node.url}/destinations")
            kinds = page.locator("#destination-kind option").evaluate_all(
                "options => options.map(o => o.value)"
            )
            assert kinds == ["dimse", "dicomweb"]
            assert page.locator("#destination-form [name=url]").is_hidden()
            page.select_option("#destination-kind", "dicomweb")
            assert page.locator("#destination-form [name=ae_title]").is_hidden()
            page.fill("#destination-form [name=name]", "web")
            page.fill("#destination-form [name=url]", "http://127.0.0.1:9/dicom-web")
            page.select_option("#destination-form [name='auth.type']", "basic")
            page.fill("#destination-form [name='auth.username']", "node")
            page.fill("#destination-form [name='auth.password']", "s3cret-password")
            page.click("#destination-form button[type=submit]")
            page.wait_for_selector("#destinations-table tr[data-destination=web]")
            saved = page.evaluate(get, "web")
            assert saved["kind"] == "dicomweb" and saved["url"].endswith(":9/dicom-web")
            assert saved["auth"] == {
                "type": "basic",
                "username": "node",
                "password": "********",
                "token": "",
            }
            row = page.locator("#destinations-table tr[data-destination=web]")
            assert "DICOMweb (STOW-RS)" in row.inner_text()
            assert "Test (QIDO-RS)" in row.inner_text()
            row.locator("[data-edit-destination]").click()
            assert (
                page.locator("#destination-form [name=url]").input_value().endswith(":9/dicom-web")
            )
            page.fill("fieldset[data-kind=dicomweb] [name=timeout_seconds]", "7")
            page.click("#destination-form button[type=submit]")
            page.wait_for_function(
                "async () => (await (await fetch('/api/destinations/web')).json())"
                ".timeout_seconds === 7"
            )
        # The edit sent the placeholder back: the node kept the password it had.
        with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
            (definition,) = db.execute(
                "SELECT definition FROM destinations WHERE name = 'web'"
            ).fetchone()
        assert json.loads(definition)["auth"]["password"] == "s3cret-password"
