"""STOW-RS: multipart/related bodies in, instances into the spool, a PS3.18 answer out.

The body is parsed as it streams (``python-multipart``); each part is kept in a
temporary file (in memory up to a few MiB) and handed to
:meth:`node.orchestration.ingest.Ingestor.accept` as soon as it is complete, so the
durability promise is the one C-STORE gives: an instance is reported stored
only once it is fsynced and recorded. A bad part fails on its own (it is
listed in the response's FailedSOPSequence with a FailureReason); parts
before and after it are unaffected. A body that breaks off or is not valid
multipart keeps the parts completed before the break.

Response status (PS3.18 10.5.3): 200 every instance stored; 202 some stored,
some failed; 409 none stored (a conflict in the data: bad instances, a study
mismatch...); 503 none stored for lack of resources; 400 not a readable
multipart body with nothing stored; 415 not ``multipart/related`` with
``type="application/dicom"``.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

import pydicom
from pydicom.dataset import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from node.dicom import status
from node.errors import AinodeError, SpoolError
from node.orchestration.ingest import IncomingInstance, Ingestor, Outcome, OutOfResources
from node.pixel_length import pixel_data_problem
from node.spool import is_valid_uid

log = logging.getLogger(__name__)

#: FailureReason for an instance whose Study Instance UID differs from the request's
#: target study (A9xx family, "does not match", as other STOW-RS servers answer).
STUDY_UID_MISMATCH = 0xA901
#: FailureReason for a part that is not ``application/dicom``.
PART_TYPE_UNSUPPORTED = 0xC000
#: FailureReason for a part larger than the configured maximum.
PART_TOO_LARGE = 0xA700

_SPOOL_IN_MEMORY = 8 * 1024 * 1024


class UnsupportedMediaType(AinodeError):
    """The request's Content-Type is not ``multipart/related; type="application/dicom"``."""


class BadRequest(AinodeError):
    """The request cannot be read as multipart (no boundary...)."""


class InstanceRejected(AinodeError):
    """One instance is refused; ``code`` is its DIMSE-style failure reason."""

    def __init__(self, code: int, reason: str, sop_uid: str = "", sop_class_uid: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.sop_uid = sop_uid
        self.sop_class_uid = sop_class_uid


def identify(
    dataset: Dataset, *, transfer_syntax: str, calling_ae: str = "", called_ae: str = ""
) -> IncomingInstance:
    """The identifiers of a decoded instance, checked as the C-STORE handler checks them.

    Raises
    ------
    InstanceRejected
        A UID is missing or malformed, the data set cannot be read, or its uncompressed
        pixel data does not match its Image Pixel description (:mod:`node.pixel_length`).
    """
    try:
        sop_uid = str(dataset.get("SOPInstanceUID", "") or "")
        sop_class = str(dataset.get("SOPClassUID", "") or "")
        series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
        study_uid = str(dataset.get("StudyInstanceUID", "") or "")
        modality = str(dataset.get("Modality", "") or "")
    except Exception as exc:  # any decoding failure is the sender's malformed data set
        raise InstanceRejected(
            status.CANNOT_UNDERSTAND, f"data set cannot be decoded: {exc}"
        ) from exc
    for name, uid in (
        ("SOPInstanceUID", sop_uid),
        ("SeriesInstanceUID", series_uid),
        ("StudyInstanceUID", study_uid),
        ("SOPClassUID", sop_class),
    ):
        if not is_valid_uid(uid):
            raise InstanceRejected(
                status.MISSING_IDENTIFIER, f"{name} missing or malformed", sop_uid, sop_class
            )
    if not transfer_syntax:
        raise InstanceRejected(
            status.CANNOT_UNDERSTAND, "no Transfer Syntax UID in the file meta", sop_uid, sop_class
        )
    problem = pixel_data_problem(dataset, transfer_syntax)
    if problem is not None:
        raise InstanceRejected(status.PIXEL_DATA_MISMATCH, problem, sop_uid, sop_class)
    return IncomingInstance(
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        series_uid=series_uid,
        study_uid=study_uid,
        transfer_syntax=transfer_syntax,
        modality=modality,
        calling_ae=calling_ae,
        called_ae=called_ae,
    )


def encode_part10(dataset: Dataset) -> bytes:
    """A dataset as a Part 10 file (preamble, file meta, data set) as it will be spooled."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def decode_part10(data: bytes) -> tuple[Dataset, bytes]:
    """Read a Part 10 file fully; return it and the bytes to spool.

    A file sent without its 128-byte preamble (starting at ``DICM``) gets a zero
    preamble, so the spool always holds regular Part 10 files.

    Raises
    ------
    InstanceRejected
        Not a readable DICOM file (truncated, no file meta...).
    """
    if data[:4] == b"DICM":
        data = bytes(128) + data
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=False)
        if "TransferSyntaxUID" not in dataset.file_meta:
            raise ValueError("no Transfer Syntax UID in the file meta")
        if "PixelData" in dataset and not dataset.PixelData:
            raise ValueError("empty Pixel Data")
    except Exception as exc:
        raise InstanceRejected(
            status.CANNOT_UNDERSTAND, f"not a readable DICOM file: {exc}"
        ) from exc
    return dataset, data


@dataclass
class StowResult:
    """What happened to each part of one STOW-RS request."""

    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP class, SOP instance)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (class, instance, reason)
    syntax_error: str | None = None
    duplicates: int = 0
    #: Instances newly stored, per series (what :meth:`StowReceiver.finished` hands on).
    series: Counter[str] = field(default_factory=Counter)

    def http_status(self) -> int:
        if not self.failed and self.syntax_error is None:
            return 200 if self.stored else 400
        if self.stored:
            return 202
        if self.syntax_error is not None and not self.failed:
            return 400
        if self.failed and all(code == status.OUT_OF_RESOURCES for *_, code in self.failed):
            return 503
        return 409

    def response(self, base_url: str = "") -> dict[str, Any]:
        """The response data set in the DICOM JSON model (PS3.18 F.2)."""
        body: dict[str, Any] = {}
        if self.failed or self.syntax_error is not None:
            items = [
                {
                    "00081150": {"vr": "UI", "Value": [cls]} if cls else {"vr": "UI"},
                    "00081155": {"vr": "UI", "Value": [uid]} if uid else {"vr": "UI"},
                    "00081197": {"vr": "US", "Value": [code]},
                }
                for cls, uid, code in self.failed
            ]
            if self.syntax_error is not None:
                items.append(
                    {
                        "00081150": {"vr": "UI"},
                        "00081155": {"vr": "UI"},
                        "00081197": {"vr": "US", "Value": [status.CANNOT_UNDERSTAND]},
                    }
                )
            body["00081198"] = {"vr": "SQ", "Value": items}
        if self.stored:
            body["00081199"] = {
                "vr": "SQ",
                "Value": [
                    {
                        "00081150": {"vr": "UI", "Value": [cls]},
                        "00081155": {"vr": "UI", "Value": [uid]},
                    }
                    for cls, uid in self.stored
                ],
            }
        return body


def parse_content_type(content_type: str) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"`` request.

    Raises
    ------
    UnsupportedMediaType
        Another media type, or another ``type`` parameter (e.g. ``application/dicom+json``).
    BadRequest
        No boundary.
    """
    media, params = parse_options_header(content_type)
    if media.lower() != b"multipart/related":
        raise UnsupportedMediaType(
            f"Content-Type {media.decode('latin-1') or '(none)'} is not supported;"
            ' send multipart/related; type="application/dicom"'
        )
    part_type = params.get(b"type", b"application/dicom").lower()
    if part_type != b"application/dicom":
        raise UnsupportedMediaType(
            f"multipart/related type {part_type.decode('latin-1')} is not supported;"
            " only application/dicom (Part 10 instances)"
        )
    boundary = params.get(b"boundary", b"")
    if not boundary:
        raise BadRequest("multipart/related without a boundary")
    return boundary


class _Part:
    """One part being received; its temporary file is closed by :meth:`close`."""

    def __init__(self, limit: int) -> None:
        self.headers: dict[str, str] = {}
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        self.size = 0
        self.limit = limit

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= self.limit:
            self.file.write(data)

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.file.close()


class StowParser:
    """Feeds a streamed multipart body, collecting complete parts.

    Parameters
    ----------
    boundary
        From :func:`parse_content_type`.
    max_part_bytes
        Parts larger than this are refused (their data is not kept).
    """

    def __init__(self, boundary: bytes, *, max_part_bytes: int) -> None:
        self._limit = max_part_bytes
        self._current: _Part | None = None
        self._header_field = b""
        self._header_value = b""
        self.completed: list[_Part] = []
        self.ended = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_part_end": self._end,
                "on_header_field": self._field,
                "on_header_value": self._value,
                "on_header_end": self._header_end,
                "on_end": self._finished,
            },
            max_header_count=32,
        )

    def _begin(self) -> None:
        self._current = _Part(self._limit)

    def _data(self, data: bytes, start: int, end: int) -> None:
        assert self._current is not None
        self._current.write(data[start:end])

    def _end(self) -> None:
        if self._current is not None:
            self.completed.append(self._current)
            self._current = None

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._current is not None:
            name = self._header_field.decode("latin-1").strip().lower()
            self._current.headers[name] = self._header_value.decode("latin-1").strip()
        self._header_field = self._header_value = b""

    def _finished(self) -> None:
        self.ended = True

    def feed(self, chunk: bytes) -> None:
        """Parse more of the body. Raises :class:`MultipartParseError` on malformed input."""
        self._parser.write(chunk)

    def take(self) -> list[_Part]:
        parts, self.completed = self.completed, []
        return parts

    def discard(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None


class StowReceiver:
    """Stores the parts of STOW-RS requests through the ingestor."""

    def __init__(self, ingestor: Ingestor, *, max_part_bytes: int) -> None:
        self._ingestor = ingestor
        self.max_part_bytes = max_part_bytes

    def store_part(
        self, part: _Part, result: StowResult, *, study_uid: str | None, calling_ae: str = ""
    ) -> None:
        """Store one complete part, recording success or its failure reason in ``result``."""
        try:
            incoming, data = self._check_part(part, study_uid, calling_ae)
            try:
                outcome = self._ingestor.accept(incoming, data)
            except OutOfResources as exc:
                raise InstanceRejected(
                    status.OUT_OF_RESOURCES, str(exc), incoming.sop_uid, incoming.sop_class_uid
                ) from exc
            except SpoolError as exc:
                raise InstanceRejected(
                    status.OUT_OF_RESOURCES, str(exc), incoming.sop_uid, incoming.sop_class_uid
                ) from exc
        except InstanceRejected as exc:
            result.failed.append((exc.sop_class_uid, exc.sop_uid, exc.code))
            log.warning(
                "STOW-RS instance refused status=0x%04X sop_uid=%s reason=%s",
                exc.code,
                exc.sop_uid or "?",
                exc,
            )
            return
        finally:
            part.close()
        result.stored.append((incoming.sop_class_uid, incoming.sop_uid))
        if outcome is Outcome.DUPLICATE:
            result.duplicates += 1
        else:
            result.series[incoming.series_uid] += 1

    def finished(self, result: StowResult) -> None:
        """A request whose body was read to its end: what it stored, per series, goes to
        the ingestor's read-ahead hint (as an association that ended normally)."""
        if result.series and result.syntax_error is None:
            self._ingestor.delivered(result.series)

    def _check_part(
        self, part: _Part, study_uid: str | None, calling_ae: str
    ) -> tuple[IncomingInstance, bytes]:
        media = parse_options_header(part.headers.get("content-type", "application/dicom"))[0]
        if media.lower() != b"application/dicom":
            raise InstanceRejected(
                PART_TYPE_UNSUPPORTED, f"part of type {media.decode('latin-1')} is not a DICOM file"
            )
        if part.size > part.limit:
            raise InstanceRejected(
                PART_TOO_LARGE, f"part of {part.size} bytes exceeds the {part.limit}-byte limit"
            )
        dataset, data = decode_part10(part.read())
        incoming = identify(
            dataset,
            transfer_syntax=str(dataset.file_meta.get("TransferSyntaxUID", "")),
            calling_ae=calling_ae,
        )
        meta_sop = str(dataset.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
        if meta_sop and meta_sop != incoming.sop_uid:
            raise InstanceRejected(
                status.SOP_INSTANCE_MISMATCH,
                "MediaStorageSOPInstanceUID differs from SOPInstanceUID",
                incoming.sop_uid,
                incoming.sop_class_uid,
            )
        if study_uid is not None and incoming.study_uid != study_uid:
            raise InstanceRejected(
                STUDY_UID_MISMATCH,
                "StudyInstanceUID differs from the study in the request URL",
                incoming.sop_uid,
                incoming.sop_class_uid,
            )
        return incoming, data


__all__ = [
    "BadRequest",
    "InstanceRejected",
    "MultipartParseError",
    "StowParser",
    "StowReceiver",
    "StowResult",
    "UnsupportedMediaType",
    "decode_part10",
    "encode_part10",
    "identify",
    "parse_content_type",
]
