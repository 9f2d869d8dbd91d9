"""A failed test's report says what the whole machine did meanwhile (:mod:`tools.machine`).

On a shared 2-core CI machine every process has been stopped for tens of seconds at
once; a timeout that fired in such a stall reads differently from a slow node. The
hooks here are imported into ``tests/conftest.py``: each test's stall counters are read
when its setup starts, and a failed phase's report gains a ``machine`` section.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tools import machine

_STARTED = pytest.StashKey[machine.Sample]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED] = machine.sample()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    started = item.stash.get(_STARTED, None)
    if report.failed and started is not None:
        report.sections.append(("machine since this test's setup", machine.since(started)))
    return report
