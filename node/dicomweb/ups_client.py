"""A UPS-RS client (PS3.18 §11 Worklist Service) for the node as a performer.

Search, retrieve, update and change state of another worklist's workitems, as DICOM
JSON over HTTP with the endpoint's authentication and TLS settings
(:func:`node.dicomweb.client.http_session`). A 409 (wrong state or Transaction UID:
another performer claimed it first, or the claim is no longer ours) raises
:class:`WorkitemConflict`; anything else that is not a success raises
:class:`WorklistError` with the server's status, Warning header and text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import requests
from pydicom.dataset import Dataset

from node.config import DicomWebEndpoint
from node.dicomweb.client import http_session
from node.errors import AinodeError

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"


class WorklistError(AinodeError):
    """The worklist refused a request or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WorkitemConflict(WorklistError):
    """409: the workitem is not in a state for this, or the Transaction UID is not its own."""


def to_json(dataset: Dataset) -> dict[str, Any]:
    return dataset.to_json_dict()


def from_json(item: Mapping[str, Any]) -> Dataset:
    return Dataset.from_json(dict(item))


class UpsClient:
    """Requests to one worklist's ``{url}/workitems`` resources (one HTTP session)."""

    def __init__(self, endpoint: DicomWebEndpoint) -> None:
        self._root = endpoint.url.rstrip("/")
        self._timeout = endpoint.timeout_seconds
        self._session = http_session(endpoint)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> UpsClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self._root}{path}"
        try:
            answer = self._session.request(method, url, timeout=self._timeout, **kwargs)
        except requests.RequestException as exc:
            raise WorklistError(f"{method} {url} failed: {exc}") from exc
        if answer.status_code < 300:
            return answer
        warning = answer.headers.get("Warning", "")
        message = (
            f"{method} {url} answered {answer.status_code}"
            + (f" ({warning})" if warning else "")
            + (f": {answer.text[:300]}" if answer.text else "")
        )
        if answer.status_code == 409:
            raise WorkitemConflict(message, answer.status_code)
        raise WorklistError(message, answer.status_code)

    def search(self, filters: Mapping[str, str]) -> list[Dataset]:
        """``GET /workitems?…``: the matching workitems (all attributes)."""
        params = {**filters, "includefield": "all"}
        answer = self._request("GET", "/workitems", params=params, headers={"Accept": DICOM_JSON})
        if answer.status_code == 204 or not answer.content:
            return []
        return [from_json(item) for item in answer.json()]

    def retrieve(self, workitem_uid: str) -> Dataset:
        """``GET /workitems/{uid}``."""
        answer = self._request("GET", f"/workitems/{workitem_uid}", headers={"Accept": DICOM_JSON})
        found = answer.json()
        return from_json(found[0] if isinstance(found, list) else found)

    def update(self, workitem_uid: str, transaction_uid: str, changes: Dataset) -> None:
        """``POST /workitems/{uid}?{transaction uid}``: set attributes of a claimed workitem."""
        self._request(
            "POST",
            f"/workitems/{workitem_uid}?{transaction_uid}",
            json=[to_json(changes)],
            headers={"Content-Type": DICOM_JSON},
        )

    def change_state(self, workitem_uid: str, state: str, transaction_uid: str) -> None:
        """``PUT /workitems/{uid}/state``: claim (IN PROGRESS), COMPLETED or CANCELED."""
        request = Dataset()
        request.ProcedureStepState = state
        request.TransactionUID = transaction_uid
        self._request(
            "PUT",
            f"/workitems/{workitem_uid}/state",
            json=[to_json(request)],
            headers={"Content-Type": DICOM_JSON},
        )
