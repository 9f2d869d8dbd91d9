"""Wake pynetdicom's reactor threads when there is work instead of polling every millisecond.

Each association runs two loops that sleep 1 ms whenever they find nothing to do: the
DUL reactor (socket and primitives to send) and the association reactor (decoded DIMSE
messages). An idle association of the SCP cost 11 % of a core (measured), and at 30 ms
per instance about half of the listener's CPU time went to these wake-ups, taken from
the cores the senders and the fsyncs need.

:func:`wake_on_work` (an ``EVT_CONN_OPEN`` handler) lets an association's two threads
wait instead: the DUL thread in ``select`` on its socket and on a wake-up socket written
whenever a primitive is queued for it to send, the association thread on an event set
whenever a DIMSE message or a peer's ACSE primitive is queued for it. Both wait at most
:data:`MAX_WAIT` seconds, so what still arrives without a wake-up (timers, a kill) is
seen as before, only later by at most that much. Threads of other associations (the
node's own SCU associations) and every other sleep of pynetdicom are left as they are.
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

#: The longest a reactor thread waits without a wake-up (pynetdicom's own: 0.001 s).
MAX_WAIT = 0.02

_real_sleep = time.sleep
_installed = threading.Lock()


class _DulWaker:
    """The DUL thread waits on its socket and on ``notify`` (a primitive to send)."""

    def __init__(self, dul: Any, sock: socket.socket) -> None:
        self._dul = dul
        self._socket = sock
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def notify(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._write.send(b"\0")

    def wait(self, seconds: float) -> bool:
        """Wait for work; False when this sleep is not the reactor's idle sleep."""
        if seconds != self._dul._run_loop_delay or self._dul._kill_thread:
            return False
        try:
            select.select([self._socket, self._read], [], [], MAX_WAIT)
            with contextlib.suppress(BlockingIOError):
                self._read.recv(4096)
        except (OSError, ValueError):  # the socket closed under us: plain sleep
            return False
        return True


class _AssociationWaker:
    """The association thread waits on ``event`` (a DIMSE message or ACSE primitive)."""

    def __init__(self, assoc: Any) -> None:
        self._assoc = assoc
        self.event = threading.Event()

    def wait(self, seconds: float) -> bool:
        if seconds != 0.001 or self._assoc._kill:
            return False
        # Cleared after the wait: a message queued meanwhile is already in its queue.
        self.event.wait(MAX_WAIT)
        self.event.clear()
        return True


class _Time:
    """pynetdicom's ``time`` module as its reactor modules see it: ``sleep`` waits for
    work in a thread that has a waker, everything else is the real module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        waker = getattr(threading.current_thread(), "_ainode_waker", None)
        if waker is None or not waker.wait(seconds):
            _real_sleep(seconds)


def _after_put(queue: Any, then: Callable[[], None]) -> None:
    put = queue.put

    def put_and_wake(*args: Any, **kwargs: Any) -> None:
        put(*args, **kwargs)
        then()

    queue.put = put_and_wake


def install() -> None:
    """Route the sleeps of pynetdicom's reactor modules through :class:`_Time` (once)."""
    with _installed:
        if not isinstance(pynetdicom.dul.time, _Time):
            pynetdicom.dul.time = _Time()  # type: ignore[assignment]
            pynetdicom.association.time = _Time()  # type: ignore[assignment]


def wake_on_work(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: this association's reactor threads wait for work."""
    assoc = event.assoc
    dul = assoc.dul
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None:
        return
    dul_waker = _DulWaker(dul, sock)
    assoc_waker = _AssociationWaker(assoc)
    _after_put(dul.to_provider_queue, dul_waker.notify)
    _after_put(dul.to_user_queue, assoc_waker.event.set)
    _after_put(assoc.dimse.msg_queue, assoc_waker.event.set)
    dul._ainode_waker = dul_waker
    assoc._ainode_waker = assoc_waker
