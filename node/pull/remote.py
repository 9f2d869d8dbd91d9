"""Talking to a source: how many instances it holds (QIDO-RS / C-FIND) and retrieval
(WADO-RS / C-GET / C-MOVE to the node itself).

Every retrieved instance goes through :meth:`node.orchestration.ingest.Ingestor.accept`, as a
pushed one does; with C-MOVE the source pushes to the node's own listener, so
the C-STORE handler does it. Instances get the source's AE title as their
calling AE, so rules that match on ``calling_ae`` treat a pull like a push
from that PACS.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from pydicom.dataset import Dataset
from pynetdicom import AE, Association, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.config import AnySource, DicomWebSourceSettings, DimseSourceSettings
from node.dicom import status
from node.dicom.network import associate, requestor
from node.dicomweb.client import dicomweb_client
from node.dicomweb.receive import InstanceRejected, encode_part10, identify
from node.errors import AinodeError, SpoolError
from node.orchestration.ingest import Ingestor, Outcome

log = logging.getLogger(__name__)


class SourceError(AinodeError):
    """A source could not be queried or did not deliver what was asked."""


@dataclass(frozen=True)
class RemoteSeries:
    """A series as the source reports it."""

    study_uid: str
    series_uid: str
    instance_count: int
    modality: str = ""


@dataclass
class RetrieveCount:
    stored: int = 0
    duplicates: int = 0
    failed: int = 0

    def as_json(self) -> dict[str, int]:
        return {"stored": self.stored, "duplicates": self.duplicates, "failed": self.failed}


def source_ae_title(source: AnySource) -> str:
    return source.ae_title or ""


# -- queries ------------------------------------------------------------------------------


def _json_value(item: dict[str, Any], tag: str, default: Any = "") -> Any:
    values = item.get(tag, {}).get("Value") or [default]
    return values[0]


def query_series(
    source: AnySource, study_uid: str | None, series_uid: str | None, *, calling_ae: str
) -> list[RemoteSeries]:
    """The series of a study (or the one series) with their instance counts."""
    if not study_uid and not series_uid:
        raise ValueError("a study or a series UID is needed")
    if isinstance(source, DicomWebSourceSettings):
        return _qido_series(source, study_uid, series_uid)
    return _cfind_series(source, study_uid, series_uid, calling_ae=calling_ae)


def _qido_series(
    source: DicomWebSourceSettings, study_uid: str | None, series_uid: str | None
) -> list[RemoteSeries]:
    filters = {"SeriesInstanceUID": series_uid} if series_uid else {}
    fields = ["StudyInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"]
    try:
        with dicomweb_client(source) as client:
            found = client.search_for_series(
                study_instance_uid=study_uid or None,
                search_filters=filters,
                fields=fields,
                get_remaining=True,
            )
    except requests.RequestException as exc:
        raise SourceError(f"QIDO-RS on {source.url} failed: {exc}") from exc
    series = []
    for item in found:
        series.append(
            RemoteSeries(
                study_uid=str(_json_value(item, "0020000D", study_uid or "")),
                series_uid=str(_json_value(item, "0020000E")),
                instance_count=int(_json_value(item, "00201209", 0) or 0),
                modality=str(_json_value(item, "00080060")),
            )
        )
    return [s for s in series if s.series_uid and (not series_uid or s.series_uid == series_uid)]


@contextlib.contextmanager
def _association(
    ae: AE,
    source: DimseSourceSettings,
    operation: str,
    *,
    handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
    roles: list[Any] | None = None,
) -> Iterator[Association]:
    """An association with ``source``, released on leaving the block.

    Raises
    ------
    SourceError
        The source refused or did not answer (``operation`` names the service).
    """
    assoc, reason = associate(
        ae,
        source.host,
        source.port,
        source.ae_title,
        source.tls,
        ext_neg=roles,
        evt_handlers=list(handlers),
    )
    if assoc is None or not assoc.is_established:
        raise SourceError(f"{operation} association with {_where(source)} failed: {reason}")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _where(source: DimseSourceSettings) -> str:
    return f"{source.ae_title}@{source.host}:{source.port}"


def _identifier(study_uid: str | None, series_uid: str | None) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid or ""
    identifier.SeriesInstanceUID = series_uid or ""
    return identifier


def _cfind_series(
    source: DimseSourceSettings, study_uid: str | None, series_uid: str | None, *, calling_ae: str
) -> list[RemoteSeries]:
    ae = requestor(calling_ae, source.timeout_seconds)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    query = _identifier(study_uid, series_uid)
    query.Modality = ""
    query.NumberOfSeriesRelatedInstances = ""
    series = []
    with _association(ae, source, "C-FIND") as assoc:
        for reply, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            code = int(reply.Status) if "Status" in reply else -1
            if code in (0xFF00, 0xFF01) and identifier is not None:
                count = identifier.get("NumberOfSeriesRelatedInstances", 0)
                series.append(
                    RemoteSeries(
                        study_uid=str(identifier.get("StudyInstanceUID", study_uid or "")),
                        series_uid=str(identifier.get("SeriesInstanceUID", "")),
                        instance_count=int(count or 0),
                        modality=str(identifier.get("Modality", "")),
                    )
                )
            elif code != 0x0000:
                raise SourceError(f"C-FIND on {_where(source)} ended with status 0x{code:04X}")
    return [s for s in series if s.series_uid]


# -- retrieval ----------------------------------------------------------------------------


def _accept(ingestor: Ingestor, dataset: Dataset, data: bytes, calling_ae: str) -> Outcome:
    incoming = identify(
        dataset,
        transfer_syntax=str(dataset.file_meta.get("TransferSyntaxUID", "")),
        calling_ae=calling_ae,
    )
    return ingestor.accept(incoming, data)


def retrieve_series(
    source: AnySource,
    series: RemoteSeries,
    ingestor: Ingestor,
    *,
    node_ae_title: str,
) -> RetrieveCount:
    """Fetch one series into the spool; return what happened to its instances.

    Raises
    ------
    SourceError
        The source could not be reached or refused the retrieval.
    """
    if isinstance(source, DicomWebSourceSettings):
        return _wado_series(source, series, ingestor)
    if source.retrieve == "get":
        return _cget_series(source, series, ingestor, node_ae_title=node_ae_title)
    return _cmove_series(source, series, node_ae_title=node_ae_title)


def _count(counts: RetrieveCount, outcome: Outcome) -> None:
    if outcome is Outcome.DUPLICATE:
        counts.duplicates += 1
    else:
        counts.stored += 1


def _wado_series(
    source: DicomWebSourceSettings, series: RemoteSeries, ingestor: Ingestor
) -> RetrieveCount:
    counts = RetrieveCount()
    calling_ae = source.ae_title or ""
    try:
        with dicomweb_client(source) as client:
            instances: Iterator[Dataset] = client.iter_series(series.study_uid, series.series_uid)
            for dataset in instances:
                try:
                    _count(counts, _accept(ingestor, dataset, encode_part10(dataset), calling_ae))
                except (InstanceRejected, SpoolError) as exc:
                    counts.failed += 1
                    log.warning(
                        "pulled instance refused series_uid=%s sop_uid=%s reason=%s",
                        series.series_uid,
                        dataset.get("SOPInstanceUID", "?"),
                        exc,
                    )
    except requests.RequestException as exc:
        raise SourceError(f"WADO-RS from {source.url} failed: {exc}") from exc
    return counts


def _cget_series(
    source: DimseSourceSettings,
    series: RemoteSeries,
    ingestor: Ingestor,
    *,
    node_ae_title: str,
) -> RetrieveCount:
    counts = RetrieveCount()

    def on_store(event: Any) -> int:
        try:
            dataset: Dataset = event.dataset
            dataset.file_meta = event.file_meta
            outcome = _accept(ingestor, dataset, event.encoded_dataset(), source.ae_title)
        except InstanceRejected as exc:
            counts.failed += 1
            log.warning(
                "C-GET instance refused status=0x%04X sop_uid=%s reason=%s",
                exc.code,
                exc.sop_uid or "?",
                exc,
            )
            return exc.code
        except SpoolError as exc:
            counts.failed += 1
            log.warning("C-GET instance not stored reason=%s", exc)
            return status.OUT_OF_RESOURCES
        except Exception as exc:
            counts.failed += 1
            log.warning("C-GET instance cannot be decoded reason=%s", exc)
            return status.CANNOT_UNDERSTAND
        _count(counts, outcome)
        return status.SUCCESS

    ae = requestor(node_ae_title, source.timeout_seconds)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for context in StoragePresentationContexts[: 127 - 1]:
        assert context.abstract_syntax is not None
        ae.add_requested_context(context.abstract_syntax)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    final = -1
    with _association(
        ae, source, "C-GET", handlers=[(evt.EVT_C_STORE, on_store)], roles=roles
    ) as assoc:
        for reply, _ in assoc.send_c_get(
            _identifier(series.study_uid, series.series_uid),
            StudyRootQueryRetrieveInformationModelGet,
        ):
            if "Status" in reply:
                final = int(reply.Status)
    if final not in (0x0000, 0xB000):
        raise SourceError(f"C-GET from {_where(source)} ended with status 0x{final:04X}")
    return counts


def _cmove_series(
    source: DimseSourceSettings, series: RemoteSeries, *, node_ae_title: str
) -> RetrieveCount:
    """C-MOVE to the node's own AE title: the instances arrive through the listener."""
    ae = requestor(node_ae_title, source.timeout_seconds)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    final, last = -1, Dataset()
    with _association(ae, source, "C-MOVE") as assoc:
        for reply, _ in assoc.send_c_move(
            _identifier(series.study_uid, series.series_uid),
            node_ae_title,
            StudyRootQueryRetrieveInformationModelMove,
        ):
            if "Status" in reply:
                final, last = int(reply.Status), reply
    if final not in (0x0000, 0xB000):
        raise SourceError(
            f"C-MOVE from {_where(source)} to {node_ae_title} ended with status 0x{final:04X}"
            " (does the source know the node's AE title and address?)"
        )
    return RetrieveCount(
        stored=int(last.get("NumberOfCompletedSuboperations", 0) or 0),
        failed=int(last.get("NumberOfFailedSuboperations", 0) or 0),
    )
