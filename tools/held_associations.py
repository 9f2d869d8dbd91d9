"""Hold many idle DICOM associations open to a listener (its association limit, what
an idle association costs it): tests and the idle-associations benchmark."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.dicom.reactor import stop_waking, wake_on_work
from node.dicom.reactor_pause import pause_safely
from tools.net import LOCALHOST


@contextmanager
def held_associations(
    port: int, count: int, *, called_ae: str = "AINODE", calling_ae: str = "HOLDER"
) -> Iterator[tuple[list[Association], int]]:
    """Open ``count`` Verification associations one after another and hold them: yield
    those established and how many were rejected; release them all on exit.

    Neither side times them out while held (the node's ``idle_timeout_seconds`` must be
    long enough: a loaded machine may take minutes to open them all), and their reactor
    threads wait for work as the node's listener's do, so holding them costs this process
    almost no CPU (pynetdicom's 1 ms polling: a core for 32 associations).
    """
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.network_timeout = None
    ae.acse_timeout = 120
    waking = [(evt.EVT_CONN_OPEN, wake_on_work), (evt.EVT_CONN_CLOSE, stop_waking)]
    held: list[Association] = []
    rejected = 0
    try:
        for _ in range(count):
            association = ae.associate(
                LOCALHOST,
                port,
                ae_title=called_ae,
                evt_handlers=[(evt.EVT_CONN_OPEN, pause_safely), *waking],
            )
            if association.is_established:
                held.append(association)
            elif association.is_rejected:
                rejected += 1
        yield held, rejected
    finally:
        for association in held:
            association.release()
