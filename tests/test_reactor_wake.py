"""The listener's reactor threads wake when work arrives instead of at their next poll."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynetdicom.association
import pynetdicom.dul
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import NodeSettings
from node.dicom import reactor
from node.dicom.reactor import (
    IDLE_AFTER,
    IDLE_WAIT,
    AssociationWaker,
    DulWaker,
    install,
    stop_waking,
    wake_on_work,
)
from node.dicom.scp import StorageSCP
from node.orchestration.ingest import Ingestor
from node.spool import Spool
from node.state.series import SeriesStore
from tests.support.net import free_port, wait_until
from tests.support.scu import associate

#: Long enough that a wait which ran its course cannot pass for one woken by work.
LONG = 5.0


def _association(sock: socket.socket, delay: float) -> SimpleNamespace:
    """The parts of a pynetdicom association and its DUL that the wakers use."""
    dul = SimpleNamespace(
        socket=SimpleNamespace(socket=sock),
        to_provider_queue=queue.Queue(),
        to_user_queue=queue.Queue(),
        event_queue=queue.Queue(),
        _run_loop_delay=delay,
        stop_dul=lambda: True,
        kill_dul=lambda: None,
        ident=None,  # a thread not started: every put comes from elsewhere
    )
    return SimpleNamespace(
        dul=dul, dimse=SimpleNamespace(msg_queue=queue.Queue()), kill=lambda: None
    )


def _timed(wait: Any, *args: Any) -> float:
    started = time.perf_counter()
    wait(*args)
    return time.perf_counter() - started


def _later(action: Any, delay: float = 0.05) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


def test_dul_wait_ends_when_data_arrives_or_a_primitive_is_queued() -> None:
    ours, peer = socket.socketpair()
    assoc = _association(ours, LONG)
    wake_on_work(SimpleNamespace(assoc=assoc))
    waker = assoc.dul._ainode_waker
    try:
        assert isinstance(waker, DulWaker)
        _later(lambda: peer.send(b"\x04"))
        assert _timed(waker.wait, LONG) < LONG / 2
        ours.recv(1)
        # Queued through the DUL's own queue (as pynetdicom's send_pdu does): wakes it.
        _later(lambda: assoc.dul.to_provider_queue.put("P-DATA"))
        assert _timed(waker.wait, LONG) < LONG / 2
        # A primitive already queued: no wait at all.
        assert _timed(waker.wait, LONG) < LONG / 2
    finally:
        stop_waking(SimpleNamespace(assoc=assoc))
        ours.close()
        peer.close()
    assert assoc.dul._ainode_waker is None


def test_a_primitive_the_dul_thread_queues_itself_needs_no_wake_up() -> None:
    """The DUL thread queues its own C-STORE responses (node.dicom.inline_store): it sees
    them before it waits, so no wake-up byte is written (and read back) for them."""
    ours, peer = socket.socketpair()
    assoc = _association(ours, LONG)
    assoc.dul.ident = threading.get_ident()  # this thread plays the DUL thread
    wake_on_work(SimpleNamespace(assoc=assoc))
    waker = assoc.dul._ainode_waker
    try:
        assoc.dul.to_provider_queue.put("P-DATA")
        with pytest.raises(BlockingIOError):
            waker._read.recv(1)  # nothing written
        assert _timed(waker.wait, LONG) < LONG / 2  # the queued primitive ends the wait
    finally:
        stop_waking(SimpleNamespace(assoc=assoc))
        ours.close()
        peer.close()


def test_association_wait_ends_when_a_dimse_message_is_queued() -> None:
    ours, peer = socket.socketpair()
    assoc = _association(ours, 0.001)
    try:
        waker = AssociationWaker(assoc)
        _later(lambda: assoc.dimse.msg_queue.put((1, "C-STORE-RQ")))
        assert _timed(waker.wait, LONG) < LONG / 2
        assert _timed(waker.wait, LONG) < LONG / 2  # still queued: returns at once
    finally:
        ours.close()
        peer.close()


def test_a_message_queued_for_a_blocked_get_is_not_kept_by_the_association_waker() -> None:
    """The queue's put wakes the first waiter only: a waker waiting first must pass it on
    to a caller blocked in ``get`` (a DIMSE-N request's response), which would otherwise
    see the message only when its own timeout ran out."""
    sock, peer = socket.socketpair()
    got: list[tuple[object, float]] = []
    try:
        assoc = _association(sock, 0.001)
        messages = assoc.dimse.msg_queue
        waker = threading.Thread(target=AssociationWaker(assoc).wait, args=(2 * LONG,))
        waker.start()
        wait_until(lambda: len(messages.not_empty._waiters) == 1, 5, message="the waker")

        def get() -> None:
            started = time.monotonic()
            item = messages.get(timeout=LONG)  # returns the item even after its timeout
            got.append((item, time.monotonic() - started))

        getter = threading.Thread(target=get)
        getter.start()
        wait_until(lambda: len(messages.not_empty._waiters) == 2, 5, message="the getter")
        put_at = time.monotonic()
        messages.put("response")
        getter.join(2 * LONG)
        waker.join(2 * LONG)
        woken_after = time.monotonic() - put_at
    finally:
        sock.close()
        peer.close()
    assert [item for item, _ in got] == ["response"]
    # Woken by the put (milliseconds), not by the end of its LONG timeout.
    assert got[0][1] < LONG and woken_after < LONG / 2


def test_waits_without_work_last_their_whole_delay() -> None:
    """An idle association wakes no more often than pynetdicom's own polling."""
    ours, peer = socket.socketpair()
    assoc = _association(ours, 0.05)
    try:
        assert _timed(DulWaker(assoc.dul, ours).wait, 0.05) >= 0.045
        assert _timed(AssociationWaker(assoc).wait, 0.05) >= 0.045
    finally:
        ours.close()
        peer.close()


def test_a_release_or_abort_request_for_the_association_thread_wakes_it() -> None:
    """The peer's A-RELEASE or A-ABORT reaches the association thread through the DUL's
    ``to_user_queue``, not the DIMSE queue: queueing it ends the wait too."""
    ours, peer = socket.socketpair()
    assoc = _association(ours, 0.001)
    wake_on_work(SimpleNamespace(assoc=assoc))
    try:
        waker = assoc._ainode_waker
        _later(lambda: assoc.dul.to_user_queue.put("A-RELEASE"))
        assert _timed(waker.wait, LONG) < LONG / 2
    finally:
        stop_waking(SimpleNamespace(assoc=assoc))
        ours.close()
        peer.close()


def test_an_idle_association_waits_longer_and_work_ends_the_wait_at_once() -> None:
    """After ``idle_after`` seconds without work a wait lasts ``idle_wait``, not the 1 ms
    delay; work arriving ends it at once and brings the 1 ms waits back."""
    ours, peer = socket.socketpair()
    assoc = _association(ours, 0.001)
    idle = {"idle_after": 0.3, "idle_wait": 1.0}
    dul_waker = DulWaker(assoc.dul, ours, **idle)
    assoc_waker = AssociationWaker(assoc, **idle)
    try:
        for wait in (dul_waker.wait, assoc_waker.wait):
            assert _timed(wait, 0.001) < 0.5  # busy: pynetdicom's delay
        time.sleep(0.35)
        for wait in (dul_waker.wait, assoc_waker.wait):
            assert _timed(wait, 0.001) >= 0.95  # idle: the longer wait
        # Work ends an idle wait at once, and the association is busy again.
        _later(lambda: peer.send(b"\x04"))
        assert _timed(dul_waker.wait, 0.001) < 0.9
        ours.recv(1)
        assert _timed(dul_waker.wait, 0.001) < 0.5
        _later(assoc_waker.notify)
        assert _timed(assoc_waker.wait, 0.001) < 0.9
        assert _timed(assoc_waker.wait, 0.001) < 0.5
    finally:
        dul_waker.close()
        ours.close()
        peer.close()


def test_stopping_an_idle_association_wakes_its_threads() -> None:
    """A kill (an abort, a shutdown) sets flags no waker watches: stopping the DUL and
    killing the association wake their threads, so an idle one ends without its long wait."""
    ours, peer = socket.socketpair()
    assoc = _association(ours, 0.001)
    wake_on_work(SimpleNamespace(assoc=assoc))
    dul_waker, assoc_waker = assoc.dul._ainode_waker, assoc._ainode_waker
    try:
        for waker in (dul_waker, assoc_waker):  # idle, and their waits long
            waker._idle_after, waker._idle_wait, waker._worked_at = 0.0, LONG, 0.0
        for stop, wait in (
            (assoc.dul.stop_dul, dul_waker.wait),
            (assoc.dul.kill_dul, dul_waker.wait),
            (assoc.kill, assoc_waker.wait),
        ):
            _later(stop)
            assert _timed(wait, 0.001) < LONG / 2
            dul_waker._worked_at = assoc_waker._worked_at = 0.0
    finally:
        stop_waking(SimpleNamespace(assoc=assoc))
        ours.close()
        peer.close()


def test_only_the_reactor_sleep_of_a_thread_with_a_waker_waits_for_work() -> None:
    install()
    ours, peer = socket.socketpair()
    assoc = _association(ours, LONG)
    waker = DulWaker(assoc.dul, ours)
    took: dict[str, float] = {}

    def reactor_sleep(name: str, seconds: float) -> None:
        took[name] = _timed(pynetdicom.dul.time.sleep, seconds)

    with_waker = threading.Thread(target=reactor_sleep, args=("reactor", LONG))
    with_waker._ainode_waker = waker  # type: ignore[attr-defined]
    with_waker._ainode_delay = LONG  # type: ignore[attr-defined]
    other_length = threading.Thread(target=reactor_sleep, args=("other", 0.3))
    other_length._ainode_waker = waker  # type: ignore[attr-defined]
    other_length._ainode_delay = LONG  # type: ignore[attr-defined]
    # The association thread sleeps in dul.py too (stop_dul, while the DUL thread ends).
    other_loop = threading.Thread(target=reactor_sleep, args=("other loop", 0.3))
    other_loop._ainode_waker = AssociationWaker(assoc)  # type: ignore[attr-defined]
    other_loop._ainode_delay = 0.3  # type: ignore[attr-defined]
    try:
        for thread in (with_waker, other_length, other_loop):
            thread.start()
        _later(waker.notify)
        _later(lambda: assoc.dimse.msg_queue.put((1, "C-ECHO-RQ")))
        for thread in (with_waker, other_length, other_loop):
            thread.join(LONG * 2)
        assert took["reactor"] < LONG / 2
        assert took["other"] >= 0.29  # any other sleep is a plain sleep
        assert took["other loop"] >= 0.29  # and so is another loop's waker's
        assert pynetdicom.association.time.time() > 0  # the rest is the real module
    finally:
        waker.close()
        ours.close()
        peer.close()


@contextmanager
def _listener(tmp_path: Path, database: Any, clock: Any) -> Iterator[tuple[StorageSCP, int]]:
    """The node's real SCP on a free port, stopped on exit."""
    settings = NodeSettings(ae_title="AINODE", dicom_port=free_port(), bind_address="127.0.0.1")
    scp = StorageSCP(
        settings, Ingestor(Spool(tmp_path / "spool"), SeriesStore(database), clock=clock)
    )
    scp.start()
    try:
        yield scp, settings.dicom_port
    finally:
        scp.stop()


def _requestor(ae_title: str) -> AE:
    requestor = AE(ae_title=ae_title)
    requestor.add_requested_context(Verification)
    return requestor


def _count_calls(owner: Any, name: str, counts: dict[str, int]) -> None:
    method = getattr(owner, name)

    def counted(*args: Any) -> None:
        counts[type(owner).__name__] += 1
        method(*args)

    setattr(owner, name, counted)


def test_an_association_held_open_without_traffic_rarely_wakes_its_threads(
    tmp_path, database, clock
) -> None:
    """A sender may hold associations open for minutes: each costs its two reactor
    threads a wake-up per :data:`IDLE_WAIT` (pynetdicom: 1000 a second each, 32 held kept
    a core busy), and still answers at once when it is used again."""
    with _listener(tmp_path, database, clock) as (scp, port):
        assoc = associate(_requestor("HOLDER"), "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        (acceptor,) = [a for a in scp._ae.active_associations if a.is_acceptor]
        counts = {"DulWaker": 0, "AssociationWaker": 0}
        _count_calls(acceptor.dul._ainode_waker, "wait", counts)
        _count_calls(acceptor._ainode_waker, "wait", counts)
        time.sleep(IDLE_AFTER + 0.5)
        counts.update(DulWaker=0, AssociationWaker=0)
        time.sleep(1.0)
        # At most ~1 / IDLE_WAIT each (20), against ~1000 without the idle waits.
        limit = 1.0 / IDLE_WAIT + 10
        assert counts["DulWaker"] <= limit and counts["AssociationWaker"] <= limit, counts
        assert counts["DulWaker"] >= 1 and counts["AssociationWaker"] >= 1, counts
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert assoc.is_released
        wait_until(lambda: not scp._ae.active_associations, 10, message="acceptor ended")


def test_a_requestor_idle_for_a_while_sends_and_releases_without_waiting_out_its_wait(
    tmp_path, database, clock, monkeypatch
) -> None:
    """A client association with the wakers (tools.held_associations) does its work in
    the caller's thread: ``send_*`` and ``release`` pause the reactor, and that pause must
    end an idle wait (here LONG) at once."""
    monkeypatch.setattr(reactor, "IDLE_AFTER", 0.2)
    monkeypatch.setattr(reactor, "IDLE_WAIT", LONG)
    waking = [(evt.EVT_CONN_OPEN, wake_on_work), (evt.EVT_CONN_CLOSE, stop_waking)]
    with _listener(tmp_path, database, clock) as (_, port):
        assoc = associate(
            _requestor("HOLDER"), "127.0.0.1", port, ae_title="AINODE", evt_handlers=waking
        )
        assert assoc.is_established
        time.sleep(0.6)  # both sides idle, their waits LONG
        started = time.monotonic()
        assert assoc.send_c_echo().Status == 0x0000
        time.sleep(0.6)
        assoc.release()
        took = time.monotonic() - started - 0.6
        assert assoc.is_released
        assert took < LONG / 2, took


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_listener_associations_wake_on_work_and_close_their_wake_up_sockets(
    tmp_path, database, clock
) -> None:
    requestor = _requestor("ECHOSCU")
    with _listener(tmp_path, database, clock) as (scp, port):
        baseline = _open_descriptors()
        for _ in range(3):
            assoc = associate(requestor, "127.0.0.1", port, ae_title="AINODE")
            assert assoc.is_established
            (acceptor,) = [a for a in scp._ae.active_associations if a.is_acceptor]
            assert isinstance(acceptor._ainode_waker, AssociationWaker)
            assert isinstance(acceptor.dul._ainode_waker, DulWaker)
            statuses = [assoc.send_c_echo().Status for _ in range(20)]
            assert statuses == [0x0000] * 20
            assoc.release()
            wait_until(lambda: not scp._ae.active_associations, 10, message="acceptor ended")
            assert acceptor.dul._ainode_waker is None
        # Three associations later, no wake-up socket is left open.
        wait_until(lambda: _open_descriptors() <= baseline, 10, message="descriptors closed")
