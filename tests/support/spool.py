"""Put a series into a node's spool and series table the way ingest does (for worker tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.orchestration.ingest import IncomingInstance
from node.state.series import InstanceRecord, SeriesStore
from tools.synthetic.chest_ct import write_series


def incoming_instance(dataset: Dataset, **fields: str) -> IncomingInstance:
    """What the SCP hands the ingestor for ``dataset`` (its identifiers and file meta's
    transfer syntax); ``fields`` override or add (``modality``, ``calling_ae``...)."""
    identifiers = {
        "sop_uid": str(dataset.SOPInstanceUID),
        "sop_class_uid": str(dataset.SOPClassUID),
        "series_uid": str(dataset.SeriesInstanceUID),
        "study_uid": str(dataset.StudyInstanceUID),
        "transfer_syntax": str(dataset.file_meta.TransferSyntaxUID),
    }
    return IncomingInstance(**{**identifiers, **fields})


def spool_series(
    store: SeriesStore, datasets: Sequence[Dataset], directory: Path, now: float
) -> list[Path]:
    """Write ``datasets`` under ``directory`` and record each instance; return the paths."""
    paths = write_series(list(datasets), directory)
    for dataset, path in zip(datasets, paths, strict=True):
        store.record_instance(
            InstanceRecord(
                sop_uid=str(dataset.SOPInstanceUID),
                series_uid=str(dataset.SeriesInstanceUID),
                study_uid=str(dataset.StudyInstanceUID),
                sop_class_uid=str(dataset.SOPClassUID),
                transfer_syntax=str(ExplicitVRLittleEndian),
                path=path,
                size=path.stat().st_size,
                modality=str(dataset.Modality),
            ),
            now,
        )
    return paths
