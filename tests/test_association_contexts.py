"""The listener's supported presentation contexts, copied once per accepted association."""

from __future__ import annotations

import copy

from pydicom.uid import CTImageStorage
from pynetdicom import build_context

from node.config import NodeSettings
from node.dicom.scp import TRANSFER_SYNTAXES, StorageSCP, _SharedUIDContext
from node.orchestration.ingest import Ingestor
from node.spool import Spool
from node.state.series import SeriesStore
from tests.support.net import free_port


def test_supported_contexts_copy_per_association_without_recreating_uids() -> None:
    original = build_context(CTImageStorage, TRANSFER_SYNTAXES)
    original.context_id = 1
    shared = _SharedUIDContext.of(original)
    twin = copy.deepcopy(shared)
    assert isinstance(twin, _SharedUIDContext)
    assert vars(twin) == vars(original)
    assert twin.abstract_syntax is shared.abstract_syntax  # immutable UIDs are shared
    assert twin.transfer_syntax[0] is shared.transfer_syntax[0]
    twin.context_id = 3
    twin.add_transfer_syntax("1.2.840.10008.1.2.5.1")
    assert shared.context_id == 1  # the listener's copy is untouched by an association's
    assert len(shared.transfer_syntax) == len(TRANSFER_SYNTAXES)


def test_the_listener_hands_out_the_cheap_copies(tmp_path, database, clock) -> None:
    settings = NodeSettings(ae_title="AINODE", dicom_port=free_port(), bind_address="127.0.0.1")
    ingestor = Ingestor(Spool(tmp_path / "spool"), SeriesStore(database), clock=clock)
    scp = StorageSCP(settings, ingestor)
    scp.start()
    try:
        (server,) = scp._servers
        assert server.contexts
        assert all(isinstance(cx, _SharedUIDContext) for cx in server.contexts)
    finally:
        scp.stop()
