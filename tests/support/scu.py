"""Test SCUs' associations, paused the way the node's own requestors pause them.

pynetdicom's reactor pause has a race (:mod:`node.dicom.reactor_pause`): a response that
arrives in a narrow window is taken by the reactor and dropped ("Received unexpected
N-ACTION service message"), and the caller waits out its DIMSE timeout. A test client
that hits it fails for a reason unrelated to the node, so every test SCU opens its
associations here.
"""

from __future__ import annotations

from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from node.dicom.reactor_pause import pause_safely


def associate(ae: AE, host: str, port: int, *, ae_title: str, **kwargs: Any) -> Association:
    """``ae.associate(...)`` with :func:`~node.dicom.reactor_pause.pause_safely` bound."""
    handlers = [(evt.EVT_CONN_OPEN, pause_safely), *kwargs.pop("evt_handlers", [])]
    return ae.associate(host, port, ae_title=ae_title, evt_handlers=handlers, **kwargs)


def ct_requestor() -> AE:
    """An AE "SENDER" proposing Verification and CT Image Storage (explicit VR little
    endian), as :func:`tests.support.scp.ct_listener` accepts them."""
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae
