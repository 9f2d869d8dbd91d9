"""A repeated pull request finds the pending pull (node/state/pulls.py ``request``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node.state.connection import Connection
from node.state.db import Database
from node.state.pulls import PullStore
from tests.support.net import free_ports
from tools.node_process import NodeProcess

# Every test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

T0 = 1_700_000_000.0
TOKEN = "test-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ASK = {"source": "pacs", "study_uid": "1.2.3", "series_uid": "1.2.3.4", "rule": None}


@pytest.fixture
def connect(
    request: pytest.FixtureRequest, database: Connection, tmp_path: Path
) -> Iterator[object]:
    """Opens further connections to the test's database (as another node would)."""
    opened: list[Connection] = []

    def open_one() -> Connection:
        if request.node.callspec.params["database"] == "postgres":
            from node.state.postgres import PostgresDatabase

            connection: Connection = PostgresDatabase(request.getfixturevalue("postgres_url"))
        else:
            connection = Database(tmp_path / "state.sqlite3")
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        connection.close()


def test_a_repeat_returns_the_pending_pull_and_records_nothing(database: Connection) -> None:
    pulls = PullStore(database)
    first, created = pulls.request(**ASK, origin="orthanc:stable-series", now=T0)
    assert created and first.state == "queued"
    again, created = pulls.request(**ASK, origin="orthanc:stable-series", now=T0 + 2)
    assert not created and again.id == first.id
    claimed = pulls.claim(T0 + 3, "a")
    assert claimed is not None and claimed.id == first.id
    running, created = pulls.request(**ASK, origin="api:x", now=T0 + 4)
    assert not created and running.id == first.id and running.state == "running"
    assert [p.id for p in pulls.recent()] == [first.id]


def test_a_request_after_the_pull_ended_makes_a_new_one(database: Connection) -> None:
    pulls = PullStore(database)
    first, _ = pulls.request(**ASK, origin="api:x", now=T0)
    pulls.update(first.id, T0 + 1, state="done")
    second, created = pulls.request(**ASK, origin="api:x", now=T0 + 2)
    assert created and second.id != first.id
    pulls.update(second.id, T0 + 3, state="failed", error="gone")
    third, created = pulls.request(**ASK, origin="api:x", now=T0 + 4)
    assert created and third.id not in (first.id, second.id)


def test_another_series_source_or_rule_is_another_pull(database: Connection) -> None:
    pulls = PullStore(database)
    ids = {
        pulls.request(**{**ASK, **change}, origin="api:x", now=T0)[0].id
        for change in (
            {},
            {"series_uid": "1.2.3.5"},
            {"series_uid": None},
            {"source": "other"},
            {"rule": "chest"},
        )
    }
    assert len(ids) == 5


def test_nodes_asking_at_once_make_one_pull(connect: object, database: Connection) -> None:
    stores = [PullStore(connect()) for _ in range(6)]  # type: ignore[operator]
    start = threading.Barrier(len(stores))
    results: list[tuple[int, bool]] = []

    def ask(store: PullStore) -> None:
        start.wait()
        pull, created = store.request(**ASK, origin="orthanc:stable-series", now=T0)
        results.append((pull.id, created))

    threads = [threading.Thread(target=ask, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == len(stores)
    assert len({pull_id for pull_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(PullStore(database).recent()) == 1


@pytest.mark.slow
def test_the_api_answers_a_repeat_with_the_pending_pull(tmp_path: Path) -> None:
    """POST /api/pull twice (as an Orthanc retry does): 202 then 200, one pull."""
    node_dicom, node_http, closed = free_ports(3)
    config = {
        "node": {"dicom_port": node_dicom, "http_port": node_http},
        "dicomweb": {"tokens": [{"name": "tests", "token": TOKEN}]},
        # Nothing listens there: the pull fails and waits to be retried (stays pending).
        "sources": {"pacs": {"kind": "dicomweb", "url": f"http://127.0.0.1:{closed}/dw"}},
    }
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        ask = {"source": "pacs", "study_uid": "1.2.3", "series_uid": "1.2.3.4"}
        first = httpx.post(f"{node.url}/api/pull", json=ask, headers=AUTH, timeout=30)
        assert first.status_code == 202, first.text
        assert first.json()["created"] is True
        again = httpx.post(f"{node.url}/api/notify/orthanc", headers=AUTH, timeout=30,
                           json={**ask, "event": "stable-series"})  # fmt: skip
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False
        assert again.json()["state"] in ("queued", "running")
        other = httpx.post(f"{node.url}/api/pull", json={**ask, "series_uid": "1.2.3.5"},
                           headers=AUTH, timeout=30)  # fmt: skip
        assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
        status = httpx.get(f"{node.url}/api/studies/1.2.3/status", headers=AUTH, timeout=30)
        assert len(status.json()["pulls"]) == 2
