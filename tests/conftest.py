"""Shared fixtures: a controllable clock and a fresh state database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.state.db import Database

# pytest-xdist: serial tests skipped on workers, module fixtures kept on one worker, slow
# tests handed out first (tests/README.md). A run without -n is unchanged.
from tests.support.parallel import (  # noqa: F401
    pytest_collection_modifyitems,
    pytest_configure_node,
    pytest_xdist_make_scheduler,
)

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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database(tmp_path / "state.sqlite3")
    yield db
    db.close()
