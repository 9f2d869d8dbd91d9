"""Shared fixtures: a controllable clock and a fresh state database.

A module marked ``pytestmark = pytest.mark.state_backends`` runs each test that uses
``database`` twice: on SQLite and on a fresh database of a real PostgreSQL server
(one per test session and xdist worker, :mod:`tests.support.postgres`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.state.connection import Connection
from node.state.db import Database
from tests.support.machine_report import (  # noqa: F401
    pytest_runtest_makereport,
    pytest_runtest_setup,
)

# pytest-xdist: serial tests skipped on workers, module fixtures kept on one worker, slow
# tests handed out first (tests/README.md). A run without -n is unchanged.
from tests.support.parallel import (  # noqa: F401
    pytest_collection_modifyitems,
    pytest_configure_node,
    pytest_xdist_make_scheduler,
)
from tests.support.postgres import PostgresServer

# dcmtk and Orthanc stall ~45 ms per image on loopback without it.
os.environ.setdefault("TCP_NODELAY", "1")


class FakeClock:
    """A clock tests move by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Each test starts with the root logger as pytest set it up: a command that configured
    logging (``ainode serve``, ``ainode evaluate``) in one test must not print into the
    stderr another test reads, whichever order xdist gives them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "state_backends"
    ):
        metafunc.parametrize("database", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (stopped at its end, even on failure)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database (dropped after the test)."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    """A fresh state database: SQLite, or PostgreSQL where the module asks for both."""
    if getattr(request, "param", "sqlite") == "postgres":
        from node.state.postgres import PostgresDatabase

        url = request.getfixturevalue("postgres_url")
        pg = PostgresDatabase(url)
        yield pg
        pg.close()
        return
    db = Database(tmp_path / "state.sqlite3")
    yield db
    db.close()
