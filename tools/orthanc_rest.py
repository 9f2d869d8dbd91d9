"""Small helpers over a :class:`pyorthanc.Orthanc` client for the demo, benchmarks and tests.

pyorthanc is the REST client (its typed methods, e.g. ``get_studies``,
``get_series_id_instances``, ``put_modalities_id``); these functions only add what several
callers need on top: upload a file, dataset or bytes, download an instance as a pydicom
dataset, look a study or series up by UID, find a study's series by modality, wait until
result series arrive, and C-STORE with a long timeout.

Examples
--------
>>> client = connect("http://127.0.0.1:8042")
>>> upload_many(client, files)
>>> send_to_modality(client, "ainode", [lookup_study(client, study_uid)])
>>> found = wait_for_series(client, study_uid, ["SEG", "SR"], timeout=120)
>>> sr = instance_dataset(client, found["SR"][0]["Instances"][0])
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import pydicom
import pyorthanc

from tools.net import wait_until

DicomSource = Path | str | bytes | pydicom.Dataset
Series = dict[str, Any]

#: Orthanc closes a connection idle for ``KeepAliveTimeout`` (1 s by default); the client
#: drops its idle connections sooner, so it seldom sends on one the server is closing.
KEEPALIVE_EXPIRY = 0.5
#: Requests that change nothing in Orthanc (``/tools/find`` is a read-only POST).
_READ_ONLY_POSTS = ("/tools/find",)


class RetryStaleConnection(httpx.HTTPTransport):
    """An HTTP transport that sends a read-only request once more when the server closed
    the connection without answering (a kept-alive connection it had just timed out)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except httpx.RemoteProtocolError:
            read_only = request.method in ("GET", "HEAD", "OPTIONS") or (
                request.method == "POST" and request.url.path.endswith(_READ_ONLY_POSTS)
            )
            if not read_only:
                raise
            return super().handle_request(request)  # on a new connection


def connect(
    url: str, *, credentials: tuple[str, str] | None = None, timeout: float = 60.0
) -> pyorthanc.Orthanc:
    """A pyorthanc client of the Orthanc at ``url`` (HTTP basic auth with ``credentials``)."""
    username, password = credentials if credentials is not None else (None, None)
    transport = RetryStaleConnection(limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY))
    return pyorthanc.Orthanc(
        url.rstrip("/"),
        username=username,
        password=password,
        timeout=timeout,
        transport=transport,
    )


def is_up(client: pyorthanc.Orthanc) -> bool:
    """True when ``/system`` answers."""
    try:
        client.get_system()
    except httpx.HTTPError:
        return False
    return True


def upload(client: pyorthanc.Orthanc, source: DicomSource) -> str:
    """Store one instance (a file path, its bytes or a pydicom dataset); its Orthanc id."""
    if isinstance(source, pydicom.Dataset):
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, source, enforce_file_format=True)
        data = buffer.getvalue()
    elif isinstance(source, bytes):
        data = source
    else:
        data = Path(source).read_bytes()
    answer = client.post_instances(data)
    if not isinstance(answer, dict):  # a list answers a ZIP upload
        raise ValueError("upload() takes one instance; Orthanc received several")
    return str(answer["ID"])


def upload_many(client: pyorthanc.Orthanc, sources: Iterable[DicomSource]) -> list[str]:
    """Upload instances one by one; their Orthanc ids in order."""
    return [upload(client, source) for source in sources]


def instance_dataset(client: pyorthanc.Orthanc, instance_id: str) -> pydicom.Dataset:
    """The stored DICOM file of an instance, parsed by pydicom."""
    data = cast(bytes, client.get_instances_id_file(instance_id))
    return pydicom.dcmread(io.BytesIO(data))


def _lookup(client: pyorthanc.Orthanc, level: str, query: dict[str, str]) -> str | None:
    found = cast(list[str], client.post_tools_find(json={"Level": level, "Query": query}))
    return found[0] if found else None


def lookup_study(client: pyorthanc.Orthanc, study_uid: str) -> str | None:
    """The Orthanc id of the study with this Study Instance UID, if stored."""
    return _lookup(client, "Study", {"StudyInstanceUID": str(study_uid)})


def lookup_series(client: pyorthanc.Orthanc, series_uid: str) -> str | None:
    """The Orthanc id of the series with this Series Instance UID, if stored."""
    return _lookup(client, "Series", {"SeriesInstanceUID": str(series_uid)})


def find_series(
    client: pyorthanc.Orthanc, study_uid: str, modality: str | None = None
) -> list[Series]:
    """The expanded series of a study (``ID``, ``Instances``, ``IsStable``…), of one modality."""
    query = {"StudyInstanceUID": str(study_uid)}
    if modality is not None:
        query["Modality"] = modality
    body = {"Level": "Series", "Query": query, "Expand": True}
    return cast(list[Series], client.post_tools_find(json=body))


def wait_for_series(
    client: pyorthanc.Orthanc,
    study_uid: str,
    modalities: Sequence[str],
    timeout: float,
    *,
    stable: bool = False,
    interval: float = 0.25,
) -> dict[str, list[Series]]:
    """Wait until the study has a series of each modality (``stable``: and all are stable).

    Returns ``{modality: [series, ...]}``.
    """

    def ready() -> dict[str, list[Series]] | None:
        found = {m: find_series(client, study_uid, m) for m in modalities}
        if not all(found.values()):
            return None
        if stable and not all(s.get("IsStable") for v in found.values() for s in v):
            return None
        return found

    wanted = "+".join(modalities)
    return wait_until(ready, timeout, interval=interval, message=f"{wanted} series")


def send_to_modality(
    client: pyorthanc.Orthanc,
    modality: str,
    resources: Sequence[str],
    *,
    synchronous: bool = True,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """C-STORE resources (any level) to a declared modality.

    Synchronously Orthanc answers when the association is done (counts, failures), so the
    request may take ``timeout`` seconds; otherwise it answers a job at once.
    """
    body = {"Resources": list(resources), "Synchronous": synchronous}
    usual = client.timeout
    client.timeout = httpx.Timeout(timeout)
    try:
        return cast(dict[str, Any], client.post_modalities_id_store(modality, json=body))
    finally:
        client.timeout = usual


def echo_modality(client: pyorthanc.Orthanc, modality: str) -> bool:
    """C-ECHO a declared modality; True on success."""
    try:
        client.post_modalities_id_echo(modality, json={})
    except httpx.HTTPError:
        return False
    return True


def explorer_url(client: pyorthanc.Orthanc, level: str, resource_id: str) -> str:
    """Orthanc Explorer's page of a resource (``study``, ``series``, ``instance``…)."""
    return f"{client.url}/app/explorer.html#{level}?uuid={resource_id}"


__all__ = [
    "DicomSource",
    "connect",
    "echo_modality",
    "explorer_url",
    "find_series",
    "instance_dataset",
    "is_up",
    "lookup_series",
    "lookup_study",
    "send_to_modality",
    "upload",
    "upload_many",
    "wait_for_series",
]
