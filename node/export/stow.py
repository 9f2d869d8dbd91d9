"""Sending result files to a DICOMweb server with STOW-RS.

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

import pydicom
import requests

from node.config import DicomWebDestinationSettings
from node.dicomweb.client import dicomweb_client
from node.errors import ExportError

log = logging.getLogger(__name__)


def stow_files(destination: DicomWebDestinationSettings, paths: Sequence[Path]) -> None:
    """STOW-RS every file in one request; raise :class:`ExportError` naming what failed."""
    datasets = [pydicom.dcmread(path) for path in paths]
    if not datasets:
        return
    try:
        with dicomweb_client(destination) as client:
            answer = client.store_instances(datasets)
    except requests.HTTPError as exc:
        raise ExportError(_refusal(destination, exc.response)) from exc
    except requests.RequestException as exc:
        raise ExportError(f"STOW-RS to {destination.url} failed: {exc}") from exc
    failed = answer.get("FailedSOPSequence", []) if answer is not None else []
    if failed:
        reasons = ", ".join(
            f"{item.get('ReferencedSOPInstanceUID', '?')}:"
            f" 0x{int(item.get('FailureReason', 0)):04X}"
            for item in failed
        )
        raise ExportError(f"{destination.url} refused {len(failed)} instance(s): {reasons}")
    for dataset in datasets:
        log.info(
            "result sent destination=%s sop_uid=%s via=stow-rs",
            destination.url,
            dataset.SOPInstanceUID,
        )


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
