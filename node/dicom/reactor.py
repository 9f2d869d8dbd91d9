"""Wake the listener's reactor threads as soon as there is work, not at their next poll.

Each pynetdicom association runs two loops that sleep 1 ms whenever they find nothing
to do: the DUL reactor (the socket, and primitives to send) and the association reactor
(decoded DIMSE messages). With one sender waiting for each C-STORE response, an instance
crosses three such hand-offs (its last PDU read -> the handler, the response -> the
socket, the next request's first PDU -> the reader), about 1.5 ms of a 7 ms cycle
spent asleep while work is queued (profiled, issue #14).

:func:`wake_on_work` (an ``EVT_CONN_OPEN`` handler) makes those sleeps end early when
work arrives, and keeps their length: the DUL thread waits in ``select`` on its socket
and on a wake-up socket written whenever a primitive is queued for it to send; the
association thread waits on its DIMSE message queue's own condition. Both still wake
after pynetdicom's delay (1 ms) without work, so everything else (timers, release,
abort, a kill) is seen exactly as before and an idle association costs what it did. An
earlier variant waited up to 20 ms (less idle CPU) and lost throughput under heavy load
(benchmarks/README.md, "Ingest"); this one only shortens waits. Every other sleep of
pynetdicom, and the threads of associations without a waker (the node's own SCU
associations), are left as they are.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pynetdicom.association
import pynetdicom.dul

#: pynetdicom's association reactor sleeps this long per loop (``association.py``).
ASSOCIATION_DELAY = 0.001

_real_sleep = time.sleep
_installed = threading.Lock()


class DulWaker:
    """The DUL thread waits on its socket and on :meth:`notify` (a primitive to send)."""

    def __init__(self, dul: Any, sock: socket.socket) -> None:
        self._dul = dul
        self._socket = sock
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def notify(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._write.send(b"\0")

    def wait(self, seconds: float) -> None:
        """Up to ``seconds``, less as soon as data arrives or a primitive is queued."""
        dul = self._dul
        if dul.to_provider_queue.qsize() or dul.event_queue.qsize():
            return
        pending = getattr(self._socket, "pending", None)  # TLS: decrypted bytes buffered
        if pending is not None and pending():
            return
        try:
            select.select([self._socket, self._read], [], [], seconds)
            with contextlib.suppress(BlockingIOError):
                self._read.recv(4096)
        except (OSError, ValueError):  # a socket closed under us: wait as pynetdicom does
            _real_sleep(seconds)

    def close(self) -> None:
        self._read.close()
        self._write.close()


class AssociationWaker:
    """The association thread waits on its DIMSE message queue's condition."""

    def __init__(self, assoc: Any) -> None:
        self._queue = assoc.dimse.msg_queue

    def wait(self, seconds: float) -> None:
        """Up to ``seconds``, less as soon as a DIMSE message is queued."""
        queue = self._queue
        with queue.not_empty:  # holds the queue's mutex: _qsize, not qsize (it locks)
            if not queue._qsize():
                queue.not_empty.wait(seconds)
            if queue._qsize():
                # A put notifies one waiter. Another thread may be blocked in the queue's
                # get() (a DIMSE-N caller waiting for its response): pass the wake-up on,
                # or that caller would sleep until its timeout with the message queued.
                queue.not_empty.notify()


class _Time:
    """pynetdicom's ``time`` module as its reactor modules see it: the reactor sleep of
    a thread with a waker waits for work; everything else is the real module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        waker = getattr(thread, "_ainode_waker", None)
        if waker is None or seconds != getattr(thread, "_ainode_delay", None):
            _real_sleep(seconds)
            return
        waker.wait(seconds)


def install() -> None:
    """Route the sleeps of pynetdicom's reactor modules through :class:`_Time` (once)."""
    with _installed:
        if not isinstance(pynetdicom.dul.time, _Time):
            pynetdicom.dul.time = _Time()  # type: ignore[assignment]
            pynetdicom.association.time = _Time()  # type: ignore[assignment]


def _after_put(queue: Any, then: Callable[[], None]) -> None:
    put = queue.put

    def put_and_wake(*args: Any, **kwargs: Any) -> None:
        put(*args, **kwargs)
        then()

    queue.put = put_and_wake


def wake_on_work(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: this association's reactor threads wake on work."""
    assoc = event.assoc
    dul = assoc.dul
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None:
        return
    install()
    dul_waker = DulWaker(dul, sock)
    _after_put(dul.to_provider_queue, dul_waker.notify)
    dul._ainode_delay = dul._run_loop_delay
    dul._ainode_waker = dul_waker
    assoc._ainode_delay = ASSOCIATION_DELAY
    assoc._ainode_waker = AssociationWaker(assoc)


def stop_waking(event: Any) -> None:
    """``EVT_CONN_CLOSE`` handler: back to plain sleeps, and the wake-up socket closed."""
    dul = event.assoc.dul
    waker = getattr(dul, "_ainode_waker", None)
    if isinstance(waker, DulWaker):
        dul._ainode_waker = None
        waker.close()
