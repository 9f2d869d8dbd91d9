"""The machine's stall readings (tools.machine) and the ``machine`` section that a failed
test's report gains (tests/support/machine_report.py), from a real pytest run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import machine
from tools.node_process import PROJECT_ROOT

needs_psi = pytest.mark.skipif(
    not Path("/proc/pressure/cpu").exists(), reason="this kernel has no pressure-stall info"
)


SPIN = "import time\nend = time.monotonic() + 1\nwhile time.monotonic() < end:\n    pass"


@needs_psi
def test_cpu_contention_shows_as_cpu_pressure() -> None:
    before = machine.sample()
    hogs = [
        subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2 * (os.cpu_count() or 1) + 1)
    ]
    for hog in hogs:
        hog.wait(30)
    after = machine.sample()
    assert before.cpu_some_us is not None and after.cpu_some_us is not None
    assert after.cpu_some_us - before.cpu_some_us > 100_000  # > 0.1 s waited for a CPU
    line = machine.since(before)
    waited = re.search(r"CPU wanted by some (\d+\.\d) s", line)
    assert waited and float(waited.group(1)) >= 0.1, line
    assert re.search(r"IO fully stalled \d+\.\d s", line) and "load " in line, line


def test_process_state_names_the_wait() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 30
        # Until it is in time.sleep (starting, it may run or wait for the disk).
        while not (state := machine.process_state(sleeper.pid)).endswith("nanosleep"):
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        assert state.startswith("S (sleeping) in "), state
    finally:
        sleeper.kill()
        sleeper.wait()
    assert machine.process_state(sleeper.pid) == "gone"


FAILING_TEST = """
def test_times_out():
    assert False, "timed out"

def test_passes():
    pass
"""


def test_a_failed_test_reports_what_the_machine_did(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(FAILING_TEST)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
            "tests.support.machine_report", "-c", os.devnull, "--rootdir", str(tmp_path),
            str(tmp_path),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 passed" in run.stdout, run.stdout
    sections = re.findall(r"-+ machine since this test's setup -+\n(.*)\n", run.stdout)
    assert len(sections) == 1, run.stdout  # the failed test only
    assert re.match(r"over \d+\.\d s: IO fully stalled ", sections[0]), sections[0]
