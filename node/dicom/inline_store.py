"""C-STORE requests served on the thread that read them, not handed to another.

pynetdicom runs two threads per association: the DUL reactor reads PDUs and assembles
DIMSE messages; the association reactor takes each complete message from a queue and
runs its service class. A C-STORE therefore crosses threads twice: the request from the
reader to the association thread (a queue, a condition, the interpreter lock changing
hands), and the response back (the provider queue and the reader's wake-up,
:mod:`node.dicom.reactor`). On a 2-core host receiving over four associations those
switches and the futex calls behind them were a sixth of the receiving processes' CPU
(``perf``, issue #14).

:func:`serve_stores_on_reader` (an ``EVT_CONN_OPEN`` handler) has the reader run a C-STORE
request's storage service itself, as pynetdicom's association thread would: the node's
``EVT_C_STORE`` handler, its status checks, the response, which the same thread sends on
its next loop. Nothing else changes thread: every other message (C-ECHO, the UPS
services, responses to the node's own requests), the release and the abort are still
the association thread's. A C-STORE request is left to it too, queued as pynetdicom
queues it, whenever serving it here could change what pynetdicom would do:

- the association is not established yet: pynetdicom sends the A-ASSOCIATE-AC, runs the
  ``EVT_ACCEPTED`` handlers (the node's audit record), and only then marks it
  established and starts the association thread's loop, while a sender's first request
  may already have arrived;
- another message is queued or being served (a lock both threads take to serve), or a
  caller has paused the reactor to send (``send_*``): the order of messages is kept;
- the association is being released, the request's context was not accepted, or its SOP
  class is not a storage class: pynetdicom's own warnings, refusals and aborts apply.

A sender waits for each response (pynetdicom accepts no asynchronous operations window),
so requests arrive one at a time and serving one blocks no other. An exception that
escapes the storage service (its handler's own errors become a failure status, as
before) aborts the association, as pynetdicom does, but from a thread of its own:
pynetdicom's blocking abort waits until the reader has sent the A-ABORT and seen the
connection close, which the reader cannot do while it waits.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pynetdicom import _config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

log = logging.getLogger(__name__)


def storage_context(assoc: Any, message: Any, context_id: int) -> PresentationContext | None:
    """The accepted context under which ``message`` is a C-STORE request that the storage
    service serves, as pynetdicom's ``Association._serve_request`` decides; None for
    anything that pynetdicom handles otherwise."""
    if type(message) is not C_STORE or not message.is_valid_request or assoc._sent_release:
        return None
    class_uid = str(message.AffectedSOPClassUID)
    if not _config.UNRESTRICTED_STORAGE_SERVICE:
        extended = assoc.acceptor.accepted_common_extended.get(class_uid)
        if extended is not None:
            class_uid = extended[0]
        if uid_to_service_class(class_uid) is not StorageServiceClass:
            return None
    context = assoc._accepted_cx.get(context_id)
    return context if isinstance(context, PresentationContext) else None


def serve_stores_on_reader(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler (listener associations): C-STORE requests are served on
    the DUL reactor thread that assembled them, when nothing else is in flight."""
    assoc = event.assoc
    dimse = assoc.dimse
    messages = dimse.msg_queue
    serving = threading.Lock()  # held by whichever thread serves a request
    serve = assoc._serve_request
    queue_message = messages.put

    def serve_in_turn(message: Any, context_id: int) -> None:
        with serving:
            serve(message, context_id)

    def serve_or_queue(item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        context = storage_context(assoc, message, context_id)
        if (
            context is None
            # Not yet: the association thread is still in EVT_ACCEPTED's handlers (the
            # A-ASSOCIATE-AC went out first, so the request can already be here), and the
            # storage service answers nothing on an association that is not established.
            or not assoc.is_established
            or not assoc._reactor_checkpoint.is_set()  # a caller is sending: its turn
            or messages.qsize()
            or not serving.acquire(blocking=False)
        ):
            queue_message(item, block, timeout)
            return
        try:
            dimse.cancel_req = {}
            StorageServiceClass(assoc).SCP(message, context)
            dimse.cancel_req = {}
        except Exception:
            log.exception("C-STORE service failed, aborting the association")
            threading.Thread(target=assoc._abort_blocking, name="ainode-abort", daemon=True).start()
        finally:
            serving.release()

    assoc._serve_request = serve_in_turn
    messages.put = serve_or_queue
