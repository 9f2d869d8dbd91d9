"""pynetdicom listeners for tests, on a free local port (context managers)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.support.net import free_port


class StoringSCP:
    """Accepts the storage SOP classes given (explicit and implicit VR little endian);
    subclasses answer each C-STORE in :meth:`_store`."""

    def __init__(self, ae_title: str, sop_classes: Iterable[str]) -> None:
        self.port = free_port()
        self.ae = AE(ae_title=ae_title)
        for uid in sop_classes:
            self.ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._lock = threading.Lock()

    def _store(self, event: evt.Event) -> int:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def __exit__(self, *args: object) -> None:
        self.server.shutdown()


@contextmanager
def ct_listener(handlers: Iterable[Any], *, max_pdu: int | None = None) -> Iterator[tuple[AE, int]]:
    """A plain pynetdicom listener "AINODE" (Verification, CT Image Storage in explicit VR
    little endian) with ``handlers`` bound: for the node's per-association handlers tried
    outside the node. Yields the AE and its port."""
    ae = AE(ae_title="AINODE")
    if max_pdu is not None:
        ae.maximum_pdu_size = max_pdu
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=list(handlers))
    try:
        yield ae, port
    finally:
        server.shutdown()
