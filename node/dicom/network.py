"""Socket and application-entity set-up shared by every DICOM association the node opens.

pynetdicom does not set TCP_NODELAY; without it every small DIMSE message waits for
the peer's delayed ACK (~40 ms on loopback), so every association, in or out, sets it
as soon as its socket opens.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association

from node.config import DicomTlsClientSettings
from node.dicom.reactor_pause import pause_safely
from node.tls import TlsFileError, handshake_error


def set_nodelay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: set TCP_NODELAY on the association's socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _read_exactly(sock: socket.socket, size: int) -> bytearray:
    """``size`` bytes from ``sock`` in one buffer (fewer only if the peer closed)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        got = sock.recv_into(view[done:], size - done)
        if not got:
            view.release()
            del buffer[done:]
            return buffer
        done += got
    view.release()
    return buffer


def read_whole_pdus(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: read each PDU with ``recv_into`` into one buffer.

    pynetdicom's ``AssociationSocket.recv`` reads 4 KiB per call and extends a bytearray
    (about 130 calls, each taking the GIL again, per 512 KiB instance); this reads what
    the kernel holds per call straight into the PDU's buffer. Same contract: blocking,
    fewer bytes only when the connection closed.
    """
    transport = getattr(event.assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if transport is not None and sock is not None:
        transport.recv = functools.partial(_read_exactly, sock)


def requestor(calling_ae: str, timeout: float) -> AE:
    """An AE for an outgoing association, with every pynetdicom timeout set to ``timeout``."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def associate(
    ae: AE,
    host: str,
    port: int,
    ae_title: str,
    tls: DicomTlsClientSettings | None,
    **kwargs: Any,
) -> tuple[Association | None, str]:
    """Open an association (over TLS when ``tls`` is set), with TCP_NODELAY and the
    reactor's pause without its race (:mod:`node.dicom.reactor_pause`).

    Returns the association (None when the TLS files cannot be used) and, when it is
    not established, why: the TLS failure (e.g. certificate verification) if any.
    """
    handlers = [
        (evt.EVT_CONN_OPEN, set_nodelay),
        (evt.EVT_CONN_OPEN, pause_safely),
        *kwargs.pop("evt_handlers", []),
    ]
    try:
        context = tls.context() if tls is not None else None
    except TlsFileError as exc:  # a file changed since the settings were checked
        return None, f"TLS settings unusable: {exc}"
    tls_args = (context, tls.server_name or host) if context is not None and tls else None
    assoc = ae.associate(
        host, port, ae_title=ae_title, evt_handlers=handlers, tls_args=tls_args, **kwargs
    )
    if assoc.is_established:
        return assoc, ""
    reason = handshake_error(context) if context is not None else None
    return assoc, reason or "rejected, aborted or never opened"
