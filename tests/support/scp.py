"""A pynetdicom storage SCP for tests, on a free local port (a context manager)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Self

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

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
