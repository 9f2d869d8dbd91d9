"""Socket and application-entity set-up shared by every DICOM association the node opens.

pynetdicom does not set TCP_NODELAY; without it every small DIMSE message waits for
the peer's delayed ACK (~40 ms on loopback), so every association, in or out, sets it
as soon as its socket opens.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association

from node.config import DicomTlsClientSettings
from node.tls import TlsFileError, handshake_error


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


def associate(
    ae: AE,
    host: str,
    port: int,
    ae_title: str,
    tls: DicomTlsClientSettings | None,
    **kwargs: Any,
) -> tuple[Association | None, str]:
    """Open an association (over TLS when ``tls`` is set), with TCP_NODELAY.

    Returns the association (None when the TLS files cannot be used) and, when it is
    not established, why: the TLS failure (e.g. certificate verification) if any.
    """
    handlers = [(evt.EVT_CONN_OPEN, set_nodelay), *kwargs.pop("evt_handlers", [])]
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
