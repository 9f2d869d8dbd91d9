"""The association reactor's pause without pynetdicom's race (node.dicom.reactor_pause).

The race: a ``send_*`` caller clears the checkpoint just after the reactor passed it and
before the reactor set ``_is_paused = False``; the caller reads the stale ``True``, sends,
and the reactor takes the response off the queue. The first tests stop a reactor loop in
exactly that window; the last runs the node's own requestor against its listener.
"""

from __future__ import annotations

import ast
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import NodeSettings
from node.dicom.network import associate, requestor
from node.dicom.reactor_pause import ReactorCheckpoint
from node.dicom.scp import StorageSCP
from node.orchestration.ingest import Ingestor
from node.spool import Spool
from node.state.series import SeriesStore
from tests.support.net import free_port, wait_until
from tests.support.scu import associate as scu_associate


class Reactor(threading.Thread):
    """One loop of pynetdicom's association reactor (``_run_reactor``), stopped at
    ``window``: past the checkpoint, before its own ``_is_paused = False``."""

    def __init__(self, checkpoint: Callable[[Any], Any]) -> None:
        super().__init__(daemon=True)
        self._is_paused = False
        self._reactor_checkpoint = checkpoint(self)
        self.window = threading.Event()
        self.go_on = threading.Event()
        self.passed = 0

    def run(self) -> None:
        for _ in range(2):
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self.passed += 1
            if self.passed == 1:
                self.window.set()
                self.go_on.wait(10)
            self._is_paused = False  # pynetdicom's line after the wait
            # ... here the reactor takes a message off the DIMSE queue


def in_the_window(checkpoint: Callable[[Any], Any]) -> Reactor:
    reactor = Reactor(checkpoint)
    reactor.start()
    assert reactor.window.wait(10)
    reactor._reactor_checkpoint.clear()  # a send_*() caller pauses the reactor now
    return reactor


def test_pynetdicoms_event_lets_a_caller_read_a_stale_pause() -> None:
    def event(assoc: Any) -> threading.Event:
        checkpoint = threading.Event()
        checkpoint.set()
        return checkpoint

    reactor = in_the_window(event)
    # The caller's `while not _is_paused` ends at once: it would send while the reactor
    # is about to look at the message queue. (The race this module closes.)
    assert reactor._is_paused is True
    reactor.go_on.set()
    reactor._reactor_checkpoint.set()
    reactor.join(10)


def test_the_checkpoint_unpauses_as_it_lets_the_reactor_pass() -> None:
    reactor = in_the_window(ReactorCheckpoint)
    # The caller reads False and waits for the reactor's next loop ...
    assert reactor._is_paused is False
    reactor.go_on.set()
    wait_until(lambda: reactor._is_paused, 10, message="the reactor back at the checkpoint")
    # ... where the reactor stops: the caller's response cannot be taken.
    reactor.join(0.3)
    assert reactor.is_alive() and reactor.passed == 1
    reactor._reactor_checkpoint.set()  # the caller is done
    reactor.join(10)
    assert reactor.passed == 2


def test_the_checkpoint_keeps_an_events_interface() -> None:
    owner = threading.Thread()
    checkpoint = ReactorCheckpoint(owner, opened=False)
    assert not checkpoint.is_set()
    assert checkpoint.wait(0.01) is False
    checkpoint.set()
    assert checkpoint.is_set() and checkpoint.wait() is True
    checkpoint.clear()
    threading.Timer(0.05, checkpoint.set).start()
    assert checkpoint.wait(10) is True


def test_clearing_the_checkpoint_wakes_a_reactor_in_a_long_idle_wait() -> None:
    """The caller of ``send_*`` spins until the reactor stops at the checkpoint: a
    reactor waiting for work (node.dicom.reactor) is woken by the clear, not left to
    finish an idle wait of up to 50 ms."""
    notified: list[bool] = []
    owner = threading.Thread()
    owner._ainode_waker = type("Waker", (), {"notify": lambda self: notified.append(True)})()  # type: ignore[attr-defined]
    checkpoint = ReactorCheckpoint(owner)
    checkpoint.clear()
    assert notified == [True]
    ReactorCheckpoint(threading.Thread()).clear()  # no waker: nothing to wake


def test_the_nodes_requestor_and_listener_use_it_and_lose_no_response(
    tmp_path, database, clock, caplog: pytest.LogCaptureFixture
) -> None:
    settings = NodeSettings(ae_title="AINODE", dicom_port=free_port(), bind_address="127.0.0.1")
    scp = StorageSCP(
        settings, Ingestor(Spool(tmp_path / "spool"), SeriesStore(database), clock=clock)
    )
    scp.start()
    ae: AE = requestor("NODESCU", 30)
    ae.add_requested_context(Verification)
    try:
        with caplog.at_level(logging.WARNING, logger="pynetdicom"):
            assoc, why = associate(ae, "127.0.0.1", settings.dicom_port, "AINODE", None)
            assert assoc is not None and assoc.is_established, why
            (acceptor,) = [a for a in scp._ae.active_associations if a.is_acceptor]
            assert isinstance(assoc._reactor_checkpoint, ReactorCheckpoint)
            assert isinstance(acceptor._reactor_checkpoint, ReactorCheckpoint)
            statuses = [assoc.send_c_echo().Status for _ in range(300)]
            assoc.release()
            # The test clients' helper binds it too.
            client = scu_associate(ae, "127.0.0.1", settings.dicom_port, ae_title="AINODE")
            assert isinstance(client._reactor_checkpoint, ReactorCheckpoint)
            client.release()
        assert statuses == [0x0000] * 300
        assert not [r for r in caplog.records if "unexpected" in r.getMessage()]
    finally:
        scp.stop()


def _plain_associations(path: Path) -> list[int]:
    """Lines of ``something.associate(...)`` calls that do not name ``pause_safely``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "associate"
            and not any(isinstance(n, ast.Name) and n.id == "pause_safely" for n in ast.walk(node))
        ):
            lines.append(node.lineno)
    return lines


def test_every_test_tool_and_benchmark_client_pauses_its_reactor_safely() -> None:
    """A plain ``ae.associate(...)`` in a test client drops a fast response now and then
    (the race above) and fails a test for a reason that is not the node's: clients use
    :func:`tests.support.scu.associate`."""
    root = Path(__file__).resolve().parent.parent
    helper = root / "tests" / "support" / "scu.py"
    sources = [
        path
        for folder in ("tests", "benchmarks", "tools")
        for path in root.joinpath(folder).rglob("*.py")
    ]
    plain = [
        f"{path.relative_to(root)}:{line}"
        for path in sorted(sources)
        if path != helper
        for line in _plain_associations(path)
    ]
    assert plain == []
