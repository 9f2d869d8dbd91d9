"""Socket and application-entity set-up shared by every DICOM association the node opens.

pynetdicom does not set TCP_NODELAY; without it every small DIMSE message waits for
the peer's delayed ACK (~40 ms on loopback), so every association, in or out, sets it
as soon as its socket opens.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from pynetdicom import AE


def set_nodelay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: set TCP_NODELAY on the association's socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def requestor(calling_ae: str, timeout: float) -> AE:
    """An AE for an outgoing association, with every pynetdicom timeout set to ``timeout``."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae
