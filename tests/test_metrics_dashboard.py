"""The Grafana dashboard's queries against a real Prometheus (Debian's) scraping a real node.

A small CT goes through the node into a real Orthanc (results sent), a series with a
missing slice is skipped by the input-quality gate and one association is refused (the
listener's limit of 32 is held open); then every panel's query of
``docker/grafana/ainode-dashboard.json`` must return data from Prometheus's HTTP API, and
the alert rules of ``docker/prometheus/ainode-alerts.yml`` load and stay quiet: a skip
is not a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.config import BUILT_IN_CHEST_RULE
from tests.support.dcmtk import storescu
from tests.support.pacs import one_result_each, orthanc_and_node_process
from tools.held_associations import held_associations
from tools.net import LOCALHOST, free_port, wait_until
from tools.synthetic import degraded
from tools.synthetic.chest_ct import make_chest_ct, write_series

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docker" / "grafana" / "ainode-dashboard.json"
ALERTS = REPO / "docker" / "prometheus" / "ainode-alerts.yml"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus (make debs-test)"),
]


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every target of every panel (rows included)."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], t["expr"]) for t in inner.get("targets", [])]
    return found


@contextmanager
def prometheus(workdir: Path, target: str) -> Iterator[str]:
    """Prometheus scraping ``target``'s /metrics every second; yields its URL."""
    workdir.mkdir(parents=True)
    shutil.copy(ALERTS, workdir / ALERTS.name)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [ALERTS.name],
        "scrape_configs": [
            {"job_name": "ainode", "metrics_path": "/metrics",
             "static_configs": [{"targets": [target]}]},
        ],
    }  # fmt: skip
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={LOCALHOST}:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{LOCALHOST}:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200,
            60,
            message="prometheus ready",
        )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def test_every_dashboard_panel_has_data_after_an_end_to_end_run(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard)
    assert len(queries) >= 20
    # Template variables other than the datasource would not reach Prometheus as written.
    assert not [e for _, e in queries if "$" in e]
    good, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=31)
    gapped, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=32)
    gapped = degraded.drop_slice(gapped, 12)
    with (
        orthanc_and_node_process(tmp_path, [BUILT_IN_CHEST_RULE]) as (pacs, node),
        prometheus(tmp_path / "prometheus", f"{LOCALHOST}:{node.http_port}") as url,
    ):
        storescu(node.dicom_port, write_series(good, tmp_path / "good"))
        one_result_each(pacs, good[0].StudyInstanceUID, ["SEG", "SR"])
        storescu(node.dicom_port, write_series(gapped, tmp_path / "gapped"))
        with held_associations(node.dicom_port, 32) as (held, rejected):
            assert (len(held), rejected) == (32, 0)
            refused = subprocess.run(
                ["echoscu", "-aec", "AINODE", LOCALHOST, str(node.dicom_port)],
                env={**os.environ, "TCP_NODELAY": "1"},
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert refused.returncode != 0, refused.stdout

        def metrics_after_skip() -> str | None:
            text = httpx.get(f"{node.url}/metrics", timeout=10).text
            return text if 'check="missing_slices"' in text else None

        metrics = wait_until(metrics_after_skip, 180, message="the gapped series skipped")
        skipped = 'ainode_quality_skips_total{check="missing_slices",plugin="ct_lungs"} 1.0'
        assert skipped in metrics
        assert 'ainode_jobs{state="skipped"} 1.0' in metrics
        assert 'ainode_jobs{state="failed"} 0.0' in metrics
        refusals = 'ainode_associations_refused_total{reason="too_many_associations"} 1.0'
        assert refusals in metrics
        assert 'ainode_sent_objects_total{destination="pacs"} 2.0' in metrics
        sent_bytes = re.search(r'ainode_sent_bytes_total\{destination="pacs"\} (\S+)', metrics)
        assert sent_bytes is not None and float(sent_bytes.group(1)) > 10_000
        no_gpu = "ainode_gpu_memory_bytes{" not in metrics

        def has_data(expr: str) -> list[dict[str, Any]] | None:
            return query(url, expr) or None

        for title, expr in queries:
            if no_gpu and "ainode_gpu_memory_bytes" in expr:
                assert query(url, expr) == []  # a CPU node exports no GPU samples
                continue
            wait_until(lambda e=expr: has_data(e), 120, message=f"data for {title!r}: {expr}")

        # The alert rules load; a skip moved the skipped count but fires no failure alert.
        def rule_health() -> dict[str, str]:
            groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
            return {r["name"]: r["health"] for g in groups for r in g["rules"]}

        expected = dict.fromkeys(["AinodeJobsFailed", "AinodeExportFailing", "AinodeDown"], "ok")
        wait_until(lambda: rule_health() == expected, 120, message="alert rules evaluated")
        # Prometheus may not have scraped since the skip (1 s interval, later under load), nor
        # before it (a delta needs a sample from before the skip: its first scrape can come
        # after it under load), so wait for a scraped sample that holds the skip.
        skip_seen = 'max_over_time(ainode_jobs{state="skipped"}[15m]) >= 1'
        wait_until(lambda: has_data(skip_seen), 120, message="the skip in Prometheus")
        assert query(url, 'ALERTS{alertstate="firing"}') == []
