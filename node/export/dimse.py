"""The ``dimse`` destination kind: result files to a DICOM peer with C-STORE.

Files are sent as they were written (no decode/re-encode); the socket gets TCP_NODELAY
as soon as it opens (:mod:`node.dicom.network`). A job's objects go over up to
``associations`` associations at once (see :func:`send_files`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """C-STORE every file; return each file's status (success or a warning) in the order
    of ``paths``, or raise ExportError naming what failed with the refusal's status.

    The files are shared out, the largest first, over up to ``destination.associations``
    associations opened at once, so that the peer stores them in parallel (Orthanc parses
    each object in its association's thread). A peer that refuses the extra associations
    (a limit per calling AE) while it accepts one gets their files over one more
    association afterwards (tried again while the peer still counts the ones just
    released), with a warning. Nothing is returned unless every file was
    acknowledged: one refused object or failed send fails the whole send.
    """
    headers = [(path, pydicom.dcmread(path, stop_before_pixels=True)) for path in paths]
    order = {path: index for index, path in enumerate(paths)}
    shares = _shares(headers, destination.associations)
    first_sent = _FirstSent(len(headers))
    if len(shares) == 1:
        acknowledged = _send_over_one(destination, shares[0], calling_ae, first_sent)
    else:
        with ThreadPoolExecutor(len(shares), thread_name_prefix="export-assoc") as pool:
            futures = [
                pool.submit(_send_over_one, destination, share, calling_ae, first_sent)
                for share in shares
            ]
        acknowledged = []
        errors: list[ExportError] = []
        rejected_files: list[Header] = []
        for share, future in zip(shares, futures, strict=True):  # the pool has joined
            try:
                acknowledged.extend(future.result())
            except _AssociationRejected as exc:
                errors.append(exc)
                rejected_files.extend(share)
            except ExportError as exc:
                errors.append(exc)
        # Rejected associations only (a peer's limit; two opened at once may both be
        # rejected): what they would have carried goes over one association after.
        if errors and all(isinstance(e, _AssociationRejected) for e in errors):
            log.warning(
                "destination rejected %d of %d associations at once; sending the rest over one"
                " destination=%s reason=%s",
                len(errors),
                len(shares),
                destination.ae_title,
                errors[0],
            )
            rest = sorted(rejected_files, key=lambda header: order[header[0]])
            acknowledged.extend(_send_after_release(destination, rest, calling_ae, first_sent))
        elif errors:
            raise errors[0]
    return sorted(acknowledged, key=lambda ack: order[ack.path])


Header = tuple[Path, pydicom.Dataset]


class _AssociationRejected(ExportError):
    """The peer rejected the association (A-ASSOCIATE-RJ): nothing was sent over it."""


def _shares(headers: Sequence[Header], associations: int) -> list[list[Header]]:
    """``headers`` over at most ``associations`` shares, each file (the largest first) to
    the share with the fewest bytes so far; a share keeps the files' order."""
    count = max(1, min(associations, len(headers)))
    if count == 1:
        return [list(headers)]
    sizes = {path: path.stat().st_size for path, _ in headers}
    loads = [0] * count
    picked: list[list[int]] = [[] for _ in range(count)]
    for index in sorted(range(len(headers)), key=lambda i: -sizes[headers[i][0]]):
        lightest = loads.index(min(loads))
        picked[lightest].append(index)
        loads[lightest] += sizes[headers[index][0]]
    return [[headers[i] for i in sorted(indices)] for indices in picked]


#: Waits before each new try of an association refused while another was just released
#: (a peer counts an association until its own thread ends).
RELEASE_WAITS = (0.1, 0.3, 1.0)


def _send_after_release(
    destination: DestinationSettings,
    headers: Sequence[Header],
    calling_ae: str,
    first_sent: _FirstSent,
) -> list[Acknowledgement]:
    """:func:`_send_over_one`, tried again a few times while the peer refuses the
    association (its limit still counts the one just released)."""
    for wait in (*RELEASE_WAITS, None):
        try:
            return _send_over_one(destination, headers, calling_ae, first_sent)
        except _AssociationRejected:
            if wait is None:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


class _FirstSent:
    """Hits the ``export_first_object_sent`` fault point once, at the first object
    acknowledged of a send of several (whichever association it came over)."""

    def __init__(self, total: int) -> None:
        self._armed = total > 1
        self._lock = threading.Lock()

    def acknowledged(self) -> None:
        with self._lock:
            armed, self._armed = self._armed, False
        if armed:
            fault_point("export_first_object_sent")


def _send_over_one(
    destination: DestinationSettings,
    headers: Sequence[Header],
    calling_ae: str,
    first_sent: _FirstSent,
) -> list[Acknowledgement]:
    """C-STORE ``headers``' files over one association; raise ExportError on a refusal."""
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
        message = f"association with {where} failed: {reason}"
        if assoc is not None and assoc.is_rejected:  # the peer answered: it may take fewer
            raise _AssociationRejected(message)
        raise ExportError(message)  # unreachable, aborted: no use trying another one now
    acknowledged: list[Acknowledgement] = []
    try:
        for path, header in headers:
            started = time.perf_counter()
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
                "result sent destination=%s sop_uid=%s status=0x%04X seconds=%.3f",
                destination.ae_title,
                header.SOPInstanceUID,
                code,
                time.perf_counter() - started,
            )
            first_sent.acknowledged()
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
        keep_on_edit=("tls", "associations"),
    ),
)
