"""The ``dimse`` destination kind: result files to a DICOM peer with C-STORE.

Files are sent as they were written (no decode/re-encode); the socket gets TCP_NODELAY
as soon as it opens (:mod:`node.dicom.network`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import DestinationSettings
from node.dicom.network import associate, requestor
from node.errors import ExportError
from node.export.sender import (
    TIMEOUT_FIELD,
    Acknowledgement,
    DestinationForm,
    FormField,
    ProbeAnswer,
    SenderKind,
)
from node.faults import fault_point

log = logging.getLogger(__name__)


def echo(destination: DestinationSettings, *, calling_ae: str) -> int:
    """C-ECHO the destination; return the status (raises ExportError if unreachable)."""
    ae = requestor(calling_ae, destination.timeout_seconds)
    ae.add_requested_context(Verification)
    assoc, reason = associate(
        ae, destination.host, destination.port, destination.ae_title, destination.tls
    )
    if assoc is None or not assoc.is_established:
        raise ExportError(
            f"association with {destination.ae_title}@{destination.host}:{destination.port}"
            f" failed: {reason}"
        )
    try:
        result = assoc.send_c_echo()
        return int(result.Status) if "Status" in result else -1
    finally:
        assoc.release()


def send_files(
    destination: DestinationSettings, paths: Sequence[Path], *, calling_ae: str
) -> list[Acknowledgement]:
    """C-STORE every file in one association; return each file's status (success or a
    warning), or raise ExportError naming what failed with the refusal's status."""
    headers = [(path, pydicom.dcmread(path, stop_before_pixels=True)) for path in paths]
    ae = requestor(calling_ae, destination.timeout_seconds)
    contexts: dict[str, set[str]] = {}
    for _, header in headers:
        syntaxes = contexts.setdefault(str(header.SOPClassUID), set())
        syntaxes.add(str(header.file_meta.TransferSyntaxUID))
    for sop_class, syntaxes in contexts.items():
        ordered = [*sorted(syntaxes), ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        ae.requested_contexts.append(build_context(sop_class, list(dict.fromkeys(ordered))))
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    assoc, reason = associate(
        ae,
        destination.host,
        destination.port,
        destination.ae_title,
        destination.tls,
        max_pdu=131072,
    )
    if assoc is None or not assoc.is_established:
        raise ExportError(f"association with {where} failed: {reason}")
    acknowledged: list[Acknowledgement] = []
    try:
        for index, (path, header) in enumerate(headers):
            result = assoc.send_c_store(path)
            code = int(result.Status) if "Status" in result else None
            if code is None:
                raise ExportError(f"{where} gave no C-STORE response for {path.name}")
            if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:
                raise ExportError(
                    f"{where} refused {path.name} with status 0x{code:04X}", status=code
                )
            acknowledged.append(Acknowledgement(path, str(header.SOPInstanceUID), code))
            log.info(
                "result sent destination=%s sop_uid=%s status=0x%04X",
                destination.ae_title,
                header.SOPInstanceUID,
                code,
            )
            if index == 0 and len(headers) > 1:
                fault_point("export_first_object_sent")
    finally:
        if assoc.is_established:
            assoc.release()
    return acknowledged


class DimseSender:
    """C-STORE to a DICOM peer, C-ECHO to probe it."""

    def __init__(self, destination: DestinationSettings, calling_ae: str) -> None:
        self._destination = destination
        self._calling_ae = calling_ae

    def send(self, paths: Sequence[Path]) -> list[Acknowledgement]:
        return send_files(self._destination, paths, calling_ae=self._calling_ae)

    def probe(self) -> ProbeAnswer:
        code = echo(self._destination, calling_ae=self._calling_ae)
        if code == 0:
            return ProbeAnswer(0, f"{self._destination.peer()} answered C-ECHO")
        return ProbeAnswer(
            code,
            f"{self._destination.ae_title} answered C-ECHO with status 0x{code & 0xFFFF:04X}",
        )


#: DIMSE C-STORE destinations: the default kind (no ``kind`` key).
KIND = SenderKind(
    name="dimse",
    settings=DestinationSettings,
    open=DimseSender,
    form=DestinationForm(
        label="DICOM (C-STORE)",
        summary="A DICOM peer (usually the PACS) that receives results by C-STORE.",
        fields=(
            FormField(
                "ae_title",
                "AE title",
                required=True,
                placeholder="ORTHANC",
                attributes={"maxlength": "16"},
            ),
            FormField(
                "host",
                "Host",
                required=True,
                width="grow",
                placeholder="pacs.hospital.local or 10.0.0.5",
            ),
            FormField(
                "port",
                "Port",
                input="number",
                required=True,
                default="104",
                width="narrow",
                attributes={"min": "1", "max": "65535"},
            ),
            TIMEOUT_FIELD,
        ),
        test_label="Test (C-ECHO)",
        # The form has no TLS fields: an edit keeps the destination's DICOM TLS settings.
        keep_on_edit=("tls",),
    ),
)
