"""The ``dicomweb`` destination kind: result files to a DICOMweb server with STOW-RS.

One request per job and destination (``multipart/related;
type="application/dicom"``). The exporter retries a failed request like a
failed C-STORE association; a response that lists any instance in its
FailedSOPSequence counts as a failure, so a partly stored result is sent
again (the UIDs are deterministic, so the re-send replaces, not duplicates).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import requests

from node.config import DicomWebDestinationSettings
from node.dicomweb.client import dicomweb_client
from node.errors import ExportError
from node.export.sender import (
    TIMEOUT_FIELD,
    Acknowledgement,
    DestinationForm,
    FormField,
    ProbeAnswer,
    SenderKind,
)

log = logging.getLogger(__name__)


def stow_files(
    destination: DicomWebDestinationSettings, paths: Sequence[Path]
) -> list[Acknowledgement]:
    """STOW-RS every file in one request; return what the response acknowledged, or
    raise :class:`ExportError` naming what failed (with the HTTP status or the first
    instance's FailureReason)."""
    datasets = [pydicom.dcmread(path) for path in paths]
    if not datasets:
        return []
    try:
        with dicomweb_client(destination) as client:
            answer = client.store_instances(datasets)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise ExportError(_refusal(destination, exc.response), status=status) from exc
    except requests.RequestException as exc:
        raise ExportError(f"STOW-RS to {destination.url} failed: {exc}") from exc
    failed = answer.get("FailedSOPSequence", []) if answer is not None else []
    if failed:
        reasons = ", ".join(
            f"{item.get('ReferencedSOPInstanceUID', '?')}:"
            f" 0x{int(item.get('FailureReason', 0)):04X}"
            for item in failed
        )
        raise ExportError(
            f"{destination.url} refused {len(failed)} instance(s): {reasons}",
            status=int(failed[0].get("FailureReason", 0)),
        )
    acknowledged = _acknowledged(answer, paths, datasets)
    for ack in acknowledged:
        log.info(
            "result sent destination=%s sop_uid=%s via=stow-rs",
            destination.url,
            ack.sop_instance_uid,
        )
    return acknowledged


def _acknowledged(
    answer: Any, paths: Sequence[Path], datasets: Sequence[pydicom.Dataset]
) -> list[Acknowledgement]:
    """The files the response's ReferencedSOPSequence lists, with their WarningReason.

    A success without a response body (no sequence at all) stores every instance
    (PS3.18 10.5.3: 200 OK means all were stored).
    """
    referenced = answer.get("ReferencedSOPSequence") if answer is not None else None
    if referenced is None:
        return [
            Acknowledgement(p, str(d.SOPInstanceUID)) for p, d in zip(paths, datasets, strict=True)
        ]
    statuses = {
        str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("WarningReason", 0))
        for item in referenced
    }
    return [
        Acknowledgement(path, str(ds.SOPInstanceUID), statuses[str(ds.SOPInstanceUID)])
        for path, ds in zip(paths, datasets, strict=True)
        if str(ds.SOPInstanceUID) in statuses
    ]


def _refusal(destination: DicomWebDestinationSettings, response: requests.Response | None) -> str:
    """Why the server said no, with what to check when it refused the credentials."""
    if response is None:
        return f"STOW-RS to {destination.url} failed without an answer"
    text = f"STOW-RS to {destination.url} answered HTTP {response.status_code}"
    if response.reason:
        text += f" {response.reason}"
    if response.status_code in (401, 403):
        auth = destination.auth.type
        sent = "no credentials" if auth == "none" else f"{auth} credentials"
        if auth == "basic":
            sent += f" for user {destination.auth.username!r}"
        text += f": the server refused the {sent}; check the destination's auth settings"
    return text


def probe(destination: DicomWebDestinationSettings) -> None:
    """A one-study QIDO-RS query: raises :class:`ExportError` unless the server answers."""
    try:
        with dicomweb_client(destination) as client:
            client.search_for_studies(limit=1)
    except requests.RequestException as exc:
        raise ExportError(f"QIDO-RS on {destination.url} failed: {exc}") from exc


class StowSender:
    """STOW-RS to a DICOMweb server, QIDO-RS to probe it."""

    def __init__(self, destination: DicomWebDestinationSettings, calling_ae: str) -> None:
        self._destination = destination

    def send(self, paths: Sequence[Path]) -> list[Acknowledgement]:
        return stow_files(self._destination, paths)

    def probe(self) -> ProbeAnswer:
        probe(self._destination)
        return ProbeAnswer(0, f"{self._destination.url} answered QIDO-RS")


#: DICOMweb STOW-RS destinations (``kind: dicomweb``).
KIND = SenderKind(
    name="dicomweb",
    settings=DicomWebDestinationSettings,
    open=StowSender,
    form=DestinationForm(
        label="DICOMweb (STOW-RS)",
        summary="A DICOMweb server that receives results by STOW-RS.",
        fields=(
            FormField(
                "url",
                "Service root URL",
                required=True,
                width="grow",
                placeholder="https://pacs.hospital.local/dicom-web",
            ),
            FormField(
                "auth.type",
                "Authentication",
                input="select",
                options=("none", "basic", "bearer"),
                default="none",
            ),
            FormField("auth.username", "User"),
            FormField("auth.password", "Password", input="password"),
            FormField("auth.token", "Bearer token", input="password"),
            TIMEOUT_FIELD,
        ),
        test_label="Test (QIDO-RS)",
        # The form has no TLS fields: an edit keeps the destination's HTTPS settings.
        keep_on_edit=("tls",),
    ),
)
