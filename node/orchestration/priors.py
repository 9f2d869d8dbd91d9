"""Finding the prior series of the same patient among what the node has received.

A routine that declares ``needs_prior`` (e.g. a registration for a follow-up read)
gets the most recent earlier series that is

* of the same patient: the same PatientID and the same IssuerOfPatientID (both
  absent counts as the same; one present and one absent does not, so two hospitals'
  number ranges are never mixed);
* of the same modality, in a different study, complete, not a localizer;
* of a comparable body part: equal BodyPartExamined, one containing the other
  (``CHEST`` and ``CHESTABDOMEN``; ``THORAX`` and ``LUNG`` count as ``CHEST``), or
  either one empty (many scanners leave it empty);
* earlier: its study date and time (else series, else acquisition date and time)
  before the current one's; when either has no date, received by the node before the
  current series.

Among several, the most recent study wins, then the series with the most instances.
The Frame of Reference usually differs (another day, another table position) but is
not required to. The candidates are the node's own records (state database and
spool): only what was sent to the node can be a prior. When there is none,
:class:`NoPrior` (an :class:`~node.errors.InputRejected`) says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.contract.image_attributes import is_localizer
from node.contract.volume import Volume
from node.errors import InputRejected
from node.state.series import SeriesRow, SeriesStore

log = logging.getLogger(__name__)

#: Header attributes read from each candidate's first instance.
_HEADER_TAGS = [
    "PatientID",
    "IssuerOfPatientID",
    "BodyPartExamined",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "FrameOfReferenceUID",
    "ImageType",
    "Modality",
]
#: Body part names that mean the same region, for comparison.
_BODY_PART_ALIASES = {"THORAX": "CHEST", "LUNG": "CHEST", "ABDOMEN": "ABD"}


class NoPrior(InputRejected):
    """No earlier series of the same patient qualifies as a prior."""


@dataclass(frozen=True)
class PriorSeries:
    """The series chosen as the prior.

    Attributes
    ----------
    series_uid, study_uid
        Its identity.
    paths
        Its spooled instances.
    when
        ``YYYYMMDDHHMMSS`` of its study (empty when it has no date).
    frame_of_reference_uid
        Its Frame of Reference UID (empty when absent).
    candidates
        How many series of the same modality in other studies were looked at.
    """

    series_uid: str
    study_uid: str
    paths: tuple[Path, ...]
    when: str
    frame_of_reference_uid: str
    candidates: int

    def describe(self) -> str:
        """One line for the job's timeline (no patient data)."""
        return (
            f"series={self.series_uid} study={self.study_uid} date={self.when[:8] or 'none'}"
            f" instances={len(self.paths)} candidates={self.candidates}"
        )


def patient_key(header: Dataset) -> tuple[str, str]:
    """``(PatientID, IssuerOfPatientID)``, stripped; empty strings when absent."""
    return (
        str(header.get("PatientID", "") or "").strip(),
        str(header.get("IssuerOfPatientID", "") or "").strip(),
    )


def body_part(header: Dataset) -> str:
    """BodyPartExamined, upper case without spaces or underscores, aliases resolved."""
    text = str(header.get("BodyPartExamined", "") or "").upper()
    text = "".join(c for c in text if c.isalnum())
    for alias, canonical in _BODY_PART_ALIASES.items():
        text = text.replace(alias, canonical)
    return text


def comparable_body_parts(a: str, b: str) -> bool:
    """Whether two :func:`body_part` values may show the same region."""
    return not a or not b or a in b or b in a


def acquired_at(header: Dataset) -> str:
    """``YYYYMMDDHHMMSS`` of the study (else series, else acquisition); empty without a date."""
    for date_keyword, time_keyword in (
        ("StudyDate", "StudyTime"),
        ("SeriesDate", "SeriesTime"),
        ("AcquisitionDate", "AcquisitionTime"),
    ):
        date = str(header.get(date_keyword, "") or "").strip()
        if len(date) == 8 and date.isdigit():
            time = str(header.get(time_keyword, "") or "").strip().split(".")[0]
            time = "".join(c for c in time if c.isdigit())
            return date + time.ljust(6, "0")[:6]
    return ""


def _read_header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception as exc:  # pydicom raises many types for unreadable files
        log.warning("prior candidate unreadable path=%s error=%s", path, type(exc).__name__)
        return None


def find_prior(store: SeriesStore, current: Volume | Dataset) -> PriorSeries:
    """The prior of ``current`` among the series the node holds (see the module doc).

    ``current`` is the series' volume or the header of any of its instances (the
    attributes compared are the same in every instance of a series).

    Raises
    ------
    NoPrior
        The current series has no PatientID, or no series qualifies; the message
        counts the candidates that were turned down and why.
    """
    header = current.datasets[0] if isinstance(current, Volume) else current
    patient = patient_key(header)
    if not patient[0]:
        raise NoPrior("no prior can be looked up: the current series has no PatientID")
    modality = str(header.get("Modality", ""))
    study_uid = str(header.StudyInstanceUID)
    series_uid = str(header.SeriesInstanceUID)
    region = body_part(header)
    now = acquired_at(header)
    row = store.series(series_uid)
    received = row.first_received if row is not None else float("inf")

    rejected = {"another patient": 0, "another body part": 0, "not earlier": 0, "other": 0}
    chosen: list[tuple[tuple[str, float, int], SeriesRow, tuple[Path, ...], Dataset, str]] = []
    candidates = store.complete_series_outside_study(modality, study_uid)
    for candidate in candidates:
        paths = tuple(p for p in store.instance_paths(candidate.series_uid) if p.exists())
        found = _read_header(paths[0]) if paths else None
        if found is None or is_localizer(found):
            rejected["other"] += 1
            continue
        if patient_key(found) != patient:
            rejected["another patient"] += 1
            continue
        if not comparable_body_parts(region, body_part(found)):
            rejected["another body part"] += 1
            continue
        when = acquired_at(found)
        earlier = when < now if when and now else candidate.last_received < received
        if not earlier:
            rejected["not earlier"] += 1
            continue
        # Latest study first; within it, most instances; undated ones by reception.
        rank = (when, 0.0 if when else candidate.last_received, len(paths))
        chosen.append((rank, candidate, paths, found, when))
    if not chosen:
        why = ", ".join(f"{count} {reason}" for reason, count in rejected.items() if count)
        raise NoPrior(
            f"no prior {modality or 'series'} of this patient in another study on the node"
            + (f" ({len(candidates)} looked at: {why})" if candidates else "")
        )
    _, best, paths, found, when = max(chosen, key=lambda item: item[0])
    prior = PriorSeries(
        series_uid=best.series_uid,
        study_uid=best.study_uid,
        paths=paths,
        when=when,
        frame_of_reference_uid=str(found.get("FrameOfReferenceUID", "") or ""),
        candidates=len(candidates),
    )
    log.info("prior found current_series_uid=%s %s", series_uid, prior.describe())
    return prior
