"""Wake the listener's reactor threads as soon as there is work, and rarely while idle.

Each pynetdicom association runs two loops that sleep 1 ms whenever they find nothing
to do: the DUL reactor (the socket, and primitives to send) and the association reactor
(decoded DIMSE messages, and the peer's release or abort). With one sender waiting for
each C-STORE response, an instance crosses three such hand-offs (its last PDU read -> the
handler, the response -> the socket, the next request's first PDU -> the reader), about
1.5 ms of a 7 ms cycle spent asleep while work is queued (profiled, issue #14). And an
association held open without traffic wakes both threads 1000 times a second: 32 held
associations kept one core of a 2-core host busy doing nothing.

:func:`wake_on_work` (an ``EVT_CONN_OPEN`` handler) makes those sleeps end early when
work arrives: the DUL thread waits in ``select`` on its socket and on a wake-up socket
written whenever a primitive is queued for it to send; the association thread waits on
its DIMSE message queue's condition, which is also notified when the DUL hands it any
other primitive (a release or abort request). While an association has work its waits
keep pynetdicom's length (1 ms). Once it has had none for :data:`IDLE_AFTER` seconds
they last :data:`IDLE_WAIT` instead: work still ends them at once, and only what no
waker sees (a network timeout, the ARTIM timer, a local kill) is noticed up to
:data:`IDLE_WAIT` later. (Waiting longer all the time, busy or not, lost throughput under
heavy load in an earlier variant: benchmarks/README.md, "Ingest".) Every other sleep of
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
#: An association without work for this many seconds is idle ...
IDLE_AFTER = 1.0
#: ... and its reactor threads then wait up to this long per loop (work ends a wait at once).
IDLE_WAIT = 0.05

_real_sleep = time.sleep
_installed = threading.Lock()


class _IdleWaits:
    """When a waker's thread last had work, and how long its waits may last: the loop's
    own delay while it has work, at least ``idle_wait`` once it has had none for
    ``idle_after`` seconds (default :data:`IDLE_AFTER`, :data:`IDLE_WAIT`, read when made)."""

    def __init__(self, idle_after: float | None, idle_wait: float | None) -> None:
        self._idle_after = IDLE_AFTER if idle_after is None else idle_after
        self._idle_wait = IDLE_WAIT if idle_wait is None else idle_wait
        self._worked_at = time.monotonic()

    def _worked(self) -> None:
        self._worked_at = time.monotonic()

    def _wait_length(self, seconds: float) -> float:
        if time.monotonic() - self._worked_at >= self._idle_after:
            return max(seconds, self._idle_wait)
        return seconds


class DulWaker(_IdleWaits):
    """The DUL thread waits on its socket and on :meth:`notify` (a primitive to send)."""

    def __init__(
        self,
        dul: Any,
        sock: socket.socket,
        *,
        idle_after: float | None = None,
        idle_wait: float | None = None,
    ) -> None:
        super().__init__(idle_after, idle_wait)
        self._dul = dul
        self._socket = sock
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def notify(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._write.send(b"\0")

    def notify_from_elsewhere(self) -> None:
        """:meth:`notify`, unless called on the DUL thread itself: it queued the primitive
        (a C-STORE response, :mod:`node.dicom.inline_store`) and looks at its queue
        before it waits, so a wake-up would only cost it two system calls."""
        if threading.get_ident() != self._dul.ident:
            self.notify()

    def wait(self, seconds: float) -> None:
        """Up to ``seconds`` (:data:`IDLE_WAIT` once idle), less as soon as data arrives or
        a primitive is queued."""
        dul = self._dul
        pending = getattr(self._socket, "pending", None)  # TLS: decrypted bytes buffered
        if (
            dul.to_provider_queue.qsize()
            or dul.event_queue.qsize()
            or (pending is not None and pending())
        ):
            self._worked()
            return
        seconds = self._wait_length(seconds)
        try:
            ready, _, _ = select.select([self._socket, self._read], [], [], seconds)
            with contextlib.suppress(BlockingIOError):
                self._read.recv(4096)
        except (OSError, ValueError):  # a socket closed under us: wait as pynetdicom does
            _real_sleep(seconds)
            return
        if ready:
            self._worked()

    def close(self) -> None:
        self._read.close()
        self._write.close()


class AssociationWaker(_IdleWaits):
    """The association thread waits on its DIMSE message queue's condition."""

    def __init__(
        self, assoc: Any, *, idle_after: float | None = None, idle_wait: float | None = None
    ) -> None:
        super().__init__(idle_after, idle_wait)
        self._queue = assoc.dimse.msg_queue
        self._notified = False  # with the queue's mutex held

    def notify(self) -> None:
        """Something other than a DIMSE message is there to look at: a release or abort
        request, or another thread pausing the reactor to send and receive itself (a
        requestor's ``send_*`` and ``release``; :mod:`node.dicom.reactor_pause`)."""
        queue = self._queue
        with queue.not_empty:
            self._notified = True
            # Every waiter: one blocked in get() (a DIMSE-N caller) would take a single
            # wake-up and, finding the queue empty, wait again.
            queue.not_empty.notify_all()

    def wait(self, seconds: float) -> None:
        """Up to ``seconds`` (:data:`IDLE_WAIT` once idle), less as soon as a DIMSE
        message is queued or :meth:`notify` is called."""
        queue = self._queue
        with queue.not_empty:  # holds the queue's mutex: _qsize, not qsize (it locks)
            if not queue._qsize() and not self._notified:
                queue.not_empty.wait(self._wait_length(seconds))
            if self._notified or queue._qsize():
                self._notified = False
                self._worked()
            if queue._qsize():
                # A put notifies one waiter. Another thread may be blocked in the queue's
                # get() (a DIMSE-N caller waiting for its response): pass the wake-up on,
                # or that caller would sleep until its timeout with the message queued.
                queue.not_empty.notify()


class _Time:
    """pynetdicom's ``time`` module as one reactor module sees it: the reactor sleep of a
    thread whose waker belongs to that module's loop (``loop``) waits for work; everything
    else is the real module. (The association thread also sleeps in ``dul.py``, in
    ``stop_dul`` while the DUL thread ends: a plain sleep, never an idle wait.)"""

    def __init__(self, loop: type[DulWaker | AssociationWaker]) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        waker = getattr(thread, "_ainode_waker", None)
        if not isinstance(waker, self._loop) or seconds != getattr(thread, "_ainode_delay", None):
            _real_sleep(seconds)
            return
        waker.wait(seconds)


def install() -> None:
    """Route the sleeps of pynetdicom's reactor modules through :class:`_Time` (once)."""
    with _installed:
        if not isinstance(pynetdicom.dul.time, _Time):
            pynetdicom.dul.time = _Time(DulWaker)  # type: ignore[assignment]
            pynetdicom.association.time = _Time(AssociationWaker)  # type: ignore[assignment]


def _after_put(queue: Any, then: Callable[[], None]) -> None:
    put = queue.put

    def put_and_wake(*args: Any, **kwargs: Any) -> None:
        put(*args, **kwargs)
        then()

    queue.put = put_and_wake


def _wake_on_call(owner: Any, name: str, wake: Callable[[], None], *, first: bool) -> None:
    """``owner.name(...)`` calls ``wake`` before it runs (``first``) or once it returned."""
    method = getattr(owner, name)

    def woken(*args: Any, **kwargs: Any) -> Any:
        if first:
            wake()
        result = method(*args, **kwargs)
        if not first:
            wake()
        return result

    setattr(owner, name, woken)


def wake_on_work(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: this association's reactor threads wake on work."""
    assoc = event.assoc
    dul = assoc.dul
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None:
        return
    install()
    dul_waker = DulWaker(dul, sock)
    _after_put(dul.to_provider_queue, dul_waker.notify_from_elsewhere)
    dul._ainode_delay = dul._run_loop_delay
    dul._ainode_waker = dul_waker
    assoc_waker = AssociationWaker(assoc)
    _after_put(dul.to_user_queue, assoc_waker.notify)
    # A kill is seen at once, idle or not: stopping the DUL (an abort, a release, a
    # shutdown) wakes its thread first, which then polls every 1 ms until it ends.
    _wake_on_call(dul, "stop_dul", dul_waker.notify, first=True)
    _wake_on_call(dul, "kill_dul", dul_waker.notify, first=False)
    _wake_on_call(assoc, "kill", assoc_waker.notify, first=False)
    assoc._ainode_delay = ASSOCIATION_DELAY
    assoc._ainode_waker = assoc_waker


def stop_waking(event: Any) -> None:
    """``EVT_CONN_CLOSE`` handler: back to plain sleeps, and the wake-up socket closed."""
    dul = event.assoc.dul
    waker = getattr(dul, "_ainode_waker", None)
    if isinstance(waker, DulWaker):
        dul._ainode_waker = None
        waker.close()
