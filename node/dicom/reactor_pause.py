"""pynetdicom's reactor pause without its race: a response is never taken by the reactor.

Before each ``send_*`` (C-ECHO, C-STORE, C-FIND, N-…), pynetdicom pauses the association's
reactor so that the response goes to the waiting caller, not to the reactor's request
handling. The handshake is a flag and an event (``association.py``)::

    reactor, each loop                       send_*()
    _is_paused = True                        _reactor_checkpoint.clear()
    _reactor_checkpoint.wait()               while not _is_paused: sleep
    _is_paused = False                       send the request, wait for the response
    dimse.get_msg(block=False) -> serve      _reactor_checkpoint.set()

A caller that clears the event just after the reactor's ``wait()`` returned, and before
``_is_paused = False``, reads the stale ``True`` and sends at once. The reactor goes on
to ``get_msg``; when the peer answers within that window (fast peers on loopback, a
loaded machine), the reactor takes the response, logs "Received unexpected C-STORE
service message" (or C-ECHO, C-FIND) and drops it. The caller then waits out its DIMSE
timeout and aborts the association: an export retried, a test failing now and then.

:class:`ReactorCheckpoint` replaces the event (``EVT_CONN_OPEN``, :func:`pause_safely`):
when the reactor passes it, ``_is_paused`` turns ``False`` under the same lock that
``clear()`` takes. A caller that cleared it therefore either finds the reactor stopped at
the checkpoint (``_is_paused`` still ``True``) or reads ``False`` and waits, as
pynetdicom intends, for the reactor's next loop, which stops at the checkpoint before it
looks at the message queue again. Everything else is pynetdicom's: a handler running
in the reactor thread (``_is_paused`` ``True`` for its ``send_*`` calls), ``kill()``,
release.
"""

from __future__ import annotations

import threading
from typing import Any


class ReactorCheckpoint:
    """The association reactor's checkpoint (a :class:`threading.Event`'s interface).

    Parameters
    ----------
    assoc
        The :class:`pynetdicom.association.Association` whose reactor waits on it.
    opened
        Whether it starts open (set), as pynetdicom's event did.
    """

    def __init__(self, assoc: Any, opened: bool = True) -> None:
        self._assoc = assoc
        self._condition = threading.Condition(threading.Lock())
        self._open = opened

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._condition:
            self._open = True
            self._condition.notify_all()

    def clear(self) -> None:
        with self._condition:
            self._open = False
        # A reactor in a long idle wait (node.dicom.reactor) must reach the checkpoint
        # now: the caller spins until it is paused there.
        notify = getattr(getattr(self._assoc, "_ainode_waker", None), "notify", None)
        if notify is not None:
            notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until open; the association's own thread leaves it unpaused, atomically
        with respect to :meth:`clear`."""
        with self._condition:
            passed = self._condition.wait_for(lambda: self._open, timeout)
            assoc = self._assoc
            if passed and threading.get_ident() == assoc.ident:
                assoc._is_paused = False
            return passed


def pause_safely(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: the association's reactor pauses without the race."""
    assoc = event.assoc
    current = assoc._reactor_checkpoint
    if not isinstance(current, ReactorCheckpoint):
        assoc._reactor_checkpoint = ReactorCheckpoint(assoc, current.is_set())
