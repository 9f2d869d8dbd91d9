"""Expensive set-up made once per pytest run and shared by every pytest-xdist worker.

A session-scoped fixture runs once per *worker* under ``pytest -n``; for something slow
(a wheel and a venv, an unpacked dist, a database template) that is once too many. The
first worker to get here builds it under the run's shared temp directory, holding a file
lock; the others wait on the lock and reuse it (pytest-xdist's "Making session-scoped
fixtures execute only once"). Without xdist it is built in the session's temp directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def run_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp directory every worker of this run shares (the session's own without xdist):
    xdist gives worker ``gwN`` the directory ``<the run's basetemp>/gwN``."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_per_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """The directory ``<run temp>/<name>``, filled by ``build(directory)`` once per run.

    ``build`` gets a directory that does not exist yet and must create it. A build that
    raised leaves no ``.done`` marker: the next caller removes what it left and builds
    again (and fails the same way, in its own test, rather than using half a result).
    """
    root = run_temp_dir(tmp_path_factory)
    target = root / name
    done = root / f"{name}.done"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            if target.exists():
                shutil.rmtree(target)
            build(target)
            done.touch()
    return target
