"""What lets the suite run on pytest-xdist workers: per-worker port blocks, set-up shared
once per run, and the collection hook (serial tests skipped, module fixtures on one
worker) seen from a real ``pytest -n 2`` run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.shared import once_per_run
from tools.net import LOCALHOST, free_ports, worker_port_block
from tools.node_process import PROJECT_ROOT


def test_each_xdist_worker_picks_ports_from_its_own_block(monkeypatch) -> None:
    assert worker_port_block({}) is None
    first, second = (worker_port_block({"PYTEST_XDIST_WORKER": f"gw{i}"}) for i in (0, 1))
    assert first is not None and second is not None
    assert not set(first) & set(second)
    assert max(second) < 32768  # below the kernel's ephemeral range (outgoing connections)
    moved = worker_port_block({"PYTEST_XDIST_WORKER": "gw0", "AINODE_TEST_PORT_BASE": "24000"})
    assert moved is not None and moved.start == 24000

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw9")
    block = worker_port_block()
    assert block is not None
    picked = free_ports(3) + free_ports(3)
    assert len(set(picked)) == 6 and all(port in block for port in picked)
    # A port something listens on is passed over.
    with socket.socket() as taken:
        taken.bind((LOCALHOST, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert busy not in free_ports(1)


def test_once_per_run_builds_once_for_concurrent_callers(tmp_path_factory) -> None:
    builds: list[int] = []

    def build(target: Path) -> None:
        builds.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the others to be waiting on the lock
        target.mkdir()
        (target / "made").write_text("once")

    tmp_path_factory.getbasetemp()  # made once, before the threads race
    found: list[Path] = []
    threads = [
        threading.Thread(target=lambda: found.append(once_per_run(tmp_path_factory, "x", build)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(set(found)) == 1 and len(found) == 3
    assert (found[0] / "made").read_text() == "once"


def test_once_per_run_builds_again_after_a_failed_build(tmp_path_factory) -> None:
    def broken(target: Path) -> None:
        target.mkdir()
        (target / "half").write_text("")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        once_per_run(tmp_path_factory, "y", broken)
    built = once_per_run(tmp_path_factory, "y", lambda target: target.mkdir())
    assert list(built.iterdir()) == []  # not the failed build's leftovers


#: What tests/conftest.py imports.
SAMPLE_CONFTEST = (
    "from tests.support.parallel import (  # noqa: F401\n"
    "    pytest_collection_modifyitems, pytest_configure_node, pytest_xdist_make_scheduler\n"
    ")\n"
)
SAMPLE_TESTS = """
import json, os, pytest
from pathlib import Path

OUT = Path(os.environ["SAMPLE_OUT"])

def record(name):
    (OUT / name).write_text(os.environ.get("PYTEST_XDIST_WORKER", "main"))

@pytest.fixture(scope="module")
def shared():
    (OUT / "builds").mkdir(exist_ok=True)
    (OUT / "builds" / os.environ.get("PYTEST_XDIST_WORKER", "main")).touch()
    return 1

@pytest.mark.parametrize("n", range(6))
def test_uses_module_fixture(shared, n):
    record(f"module-{n}")

@pytest.mark.parametrize("n", range(6))
def test_independent(n):
    record(f"free-{n}")

@pytest.mark.serial(reason="measures something")
def test_alone():
    record("serial")
"""


@pytest.mark.slow
def test_xdist_run_skips_serial_tests_and_keeps_module_fixtures_on_one_worker(
    tmp_path: Path,
) -> None:
    (tmp_path / "conftest.py").write_text(SAMPLE_CONFTEST)
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "SAMPLE_OUT": str(out), "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    common = ["-p", "no:cacheprovider", "-q", "-rs", "-c", os.devnull, "--rootdir", str(tmp_path)]
    common += ["--basetemp", str(tmp_path / "t")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", *common, *args, str(tmp_path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    parallel = run("-n", "2", "--dist", "loadgroup")
    assert parallel.returncode == 0, parallel.stdout + parallel.stderr
    assert "12 passed, 1 skipped" in parallel.stdout, parallel.stdout
    assert "serial (measures something): run with -m serial" in parallel.stdout
    assert not (out / "serial").exists()
    workers = {(out / f"module-{n}").read_text() for n in range(6)}
    assert len(workers) == 1 and [p.name for p in (out / "builds").iterdir()] == [*workers]
    assert {(out / f"free-{n}").read_text() for n in range(6)} <= {"gw0", "gw1"}

    alone = run("-m", "serial")
    assert alone.returncode == 0 and "1 passed" in alone.stdout, alone.stdout
    assert (out / "serial").read_text() == "main"
