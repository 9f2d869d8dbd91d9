"""Workitems as DICOM JSON (PS3.18 F.2): checking, reading and writing the UPS attributes,
and QIDO-style matching for search and filtered subscriptions.

The store keeps a workitem as the DICOM JSON ``dict`` a UPS-RS client sends and gets back;
these helpers read and write it by tag without a round trip through pydicom, and use
pydicom only to check that a body is well-formed DICOM JSON.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from node.worklist.states import (
    INVALID_ATTRIBUTE_VALUE,
    MISSING_ATTRIBUTE,
    NOT_CREATED_SCHEDULED,
    UpsError,
)

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"

SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
TRANSACTION_UID = "00081195"
PROCEDURE_STEP_STATE = "00741000"
PRIORITY = "00741200"
START_DATETIME = "00404005"
WORKITEM_CODES = "00404018"
STATION_NAME_CODES = "00404025"
INPUT_INFORMATION = "00404021"
PROGRESS_INFORMATION = "00741002"
PROGRESS = "00741004"
PROGRESS_DESCRIPTION = "00741006"
CANCELLATION_DATETIME = "00404052"
REASON_FOR_CANCELLATION = "00741238"
PERFORMED_PROCEDURE = "00741216"
PERFORMED_START = "00404050"
PERFORMED_END = "00404051"
OUTPUT_INFORMATION = "00404033"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
REFERENCED_SOPS = "00081199"
REFERENCED_CLASS = "00081150"
REFERENCED_INSTANCE = "00081155"
RETRIEVE_AE = "00080054"
RETRIEVE_URL = "00081190"
TYPE_OF_INSTANCES = "0040E020"
DICOM_RETRIEVAL = "0040E021"
WADO_RS_RETRIEVAL = "0040E025"
CODE_VALUE = "00080100"
CODING_SCHEME = "00080102"
CODE_MEANING = "00080104"
EVENT_TYPE_ID = "00001002"
AFFECTED_SOP_INSTANCE = "00001000"
#: Attributes a client may not set by an update (PS3.4 CC.2.1.2: the SCP owns them).
NOT_UPDATABLE = frozenset({SOP_CLASS_UID, SOP_INSTANCE_UID, TRANSACTION_UID, PROCEDURE_STEP_STATE})

PRIORITIES = ("HIGH", "MEDIUM", "LOW")


def value(dataset: Mapping[str, Any], tag: str) -> Any:
    """The first value of ``tag`` (``None`` when absent or empty)."""
    element = dataset.get(tag)
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value") or []
    return values[0] if values else None


def items(dataset: Mapping[str, Any], tag: str) -> list[dict[str, Any]]:
    """The items of a sequence (``[]`` when absent)."""
    element = dataset.get(tag)
    if not isinstance(element, Mapping):
        return []
    return [item for item in element.get("Value") or [] if isinstance(item, dict)]


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def sequence(*entries: dict[str, Any]) -> dict[str, Any]:
    return element("SQ", *entries)


def dicom_datetime(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y%m%d%H%M%S.%f+0000")


def parse_datetime(text: str) -> float | None:
    """A DT value as a Unix time (a missing offset is read as UTC); ``None`` if unreadable."""
    match = re.fullmatch(r"(\d{8})(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?", text.strip())
    if not match:
        return None
    date, hour, minute, second, fraction, offset = match.groups()
    stamp = datetime.strptime(
        f"{date}{hour or '00'}{minute or '00'}{second or '00'}{offset or '+0000'}",
        "%Y%m%d%H%M%S%z",
    )
    return stamp.timestamp() + (float(fraction) if fraction else 0.0)


def check_json(body: Any) -> dict[str, Any]:
    """One dataset from a DICOM JSON body (an object or a one-element array).

    Raises
    ------
    UpsError
        0x0106 (HTTP 400) with what is wrong when the body is not DICOM JSON.
    """
    if isinstance(body, list):
        if len(body) != 1:
            raise UpsError(INVALID_ATTRIBUTE_VALUE, "the body must hold exactly one dataset")
        body = body[0]
    if not isinstance(body, dict):
        raise UpsError(INVALID_ATTRIBUTE_VALUE, "the body is not a DICOM JSON object")
    for tag, entry in body.items():
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", str(tag)):
            raise UpsError(INVALID_ATTRIBUTE_VALUE, f"{str(tag)[:20]!r} is not a tag")
        if not isinstance(entry, dict) or "vr" not in entry:
            raise UpsError(INVALID_ATTRIBUTE_VALUE, f"attribute {tag} has no 'vr'")
    try:
        pydicom.Dataset.from_json(body)
    except Exception as exc:
        raise UpsError(INVALID_ATTRIBUTE_VALUE, f"not valid DICOM JSON: {exc}") from None
    return {str(tag).upper(): entry for tag, entry in body.items()}


def check_create(dataset: dict[str, Any]) -> None:
    """The N-CREATE rules a new workitem must meet (PS3.4 CC.2.5.1.3, the parts we check)."""
    state = value(dataset, PROCEDURE_STEP_STATE)
    if state is None:
        raise UpsError(MISSING_ATTRIBUTE, "Procedure Step State (0074,1000) is required")
    if state != "SCHEDULED":
        raise UpsError(NOT_CREATED_SCHEDULED, f"it is {state!r}")
    if value(dataset, TRANSACTION_UID):
        raise UpsError(INVALID_ATTRIBUTE_VALUE, "a new workitem has no Transaction UID")
    priority = value(dataset, PRIORITY)
    if priority is not None and priority not in PRIORITIES:
        raise UpsError(
            INVALID_ATTRIBUTE_VALUE,
            f"Scheduled Procedure Step Priority is {str(priority)[:16]!r}, not HIGH/MEDIUM/LOW",
        )
    start = value(dataset, START_DATETIME)
    if start is not None and parse_datetime(str(start)) is None:
        raise UpsError(
            INVALID_ATTRIBUTE_VALUE, "Scheduled Procedure Step Start DateTime is not a DT"
        )
    if not items(dataset, INPUT_INFORMATION):
        raise UpsError(MISSING_ATTRIBUTE, "Input Information Sequence (0040,4021) is empty")
    series: set[str] = set()
    for index, item in enumerate(items(dataset, INPUT_INFORMATION)):
        for tag, name in ((STUDY_UID, "Study"), (SERIES_UID, "Series")):
            if not value(item, tag):
                raise UpsError(
                    MISSING_ATTRIBUTE,
                    f"Input Information Sequence item {index} has no {name} Instance UID",
                )
        series.add(str(value(item, SERIES_UID)))
    if len(series) > 1:
        raise UpsError(
            INVALID_ATTRIBUTE_VALUE,
            f"the inputs name {len(series)} series; a workitem here runs on one series",
        )


def task_keys(dataset: Mapping[str, Any]) -> list[str]:
    """What may name the requested task, in the order they are looked up in
    ``worklist.tasks``: ``scheme^code`` and the bare code of each Scheduled Workitem Code,
    then the same and the meaning of each Scheduled Station Name Code."""
    keys: list[str] = []
    for tag in (WORKITEM_CODES, STATION_NAME_CODES):
        for item in items(dataset, tag):
            code, scheme = value(item, CODE_VALUE), value(item, CODING_SCHEME)
            if code:
                keys += [f"{scheme}^{code}", str(code)] if scheme else [str(code)]
            if tag == STATION_NAME_CODES and value(item, CODE_MEANING):
                keys.append(str(value(item, CODE_MEANING)))
    return keys


@dataclass(frozen=True)
class InputReference:
    """One Input Information Sequence item: what to fetch and where from."""

    study_uid: str
    series_uid: str | None
    sop_uids: tuple[str, ...]
    retrieve_ae: str | None
    retrieve_url: str | None


def input_references(dataset: Mapping[str, Any]) -> list[InputReference]:
    """The inputs, with the retrieve AE/URL from the item or its Retrieval Sequences."""
    found: list[InputReference] = []
    for item in items(dataset, INPUT_INFORMATION):
        ae = value(item, RETRIEVE_AE)
        url = value(item, RETRIEVE_URL)
        for nested in items(item, DICOM_RETRIEVAL):
            ae = ae or value(nested, RETRIEVE_AE)
        for nested in items(item, WADO_RS_RETRIEVAL):
            url = url or value(nested, RETRIEVE_URL)
        found.append(
            InputReference(
                study_uid=str(value(item, STUDY_UID)),
                series_uid=str(value(item, SERIES_UID)) if value(item, SERIES_UID) else None,
                sop_uids=tuple(
                    str(value(ref, REFERENCED_INSTANCE))
                    for ref in items(item, REFERENCED_SOPS)
                    if value(ref, REFERENCED_INSTANCE)
                ),
                retrieve_ae=str(ae) if ae else None,
                retrieve_url=str(url) if url else None,
            )
        )
    return found


def with_progress(
    dataset: dict[str, Any],
    percent: int,
    description: str,
    *,
    reason: str | None = None,
    canceled_at: float | None = None,
) -> dict[str, Any]:
    """A copy with the Procedure Step Progress Information Sequence set."""
    entry: dict[str, Any] = {
        PROGRESS: element("DS", percent),
        PROGRESS_DESCRIPTION: element("ST", description[:1024]),
    }
    previous = (items(dataset, PROGRESS_INFORMATION) or [{}])[0]
    for tag in (CANCELLATION_DATETIME, REASON_FOR_CANCELLATION):
        if tag in previous:
            entry[tag] = previous[tag]
    if reason is not None:
        entry[REASON_FOR_CANCELLATION] = element("LT", reason[:10240])
    if canceled_at is not None:
        entry[CANCELLATION_DATETIME] = element("DT", dicom_datetime(canceled_at))
    updated = copy.deepcopy(dataset)
    updated[PROGRESS_INFORMATION] = sequence(entry)
    return updated


def progress_of(dataset: Mapping[str, Any]) -> tuple[float | None, str | None]:
    entry = (items(dataset, PROGRESS_INFORMATION) or [{}])[0]
    percent = value(entry, PROGRESS)
    description = value(entry, PROGRESS_DESCRIPTION)
    return (
        float(percent) if percent is not None else None,
        str(description) if description is not None else None,
    )


@dataclass(frozen=True)
class OutputReference:
    """An object the job made and sent: its UIDs and where it can be retrieved."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_uid: str
    retrieve_ae: str | None = None
    retrieve_url: str | None = None


def with_performed(
    dataset: dict[str, Any],
    *,
    started_at: float,
    ended_at: float,
    outputs: Iterable[OutputReference],
) -> dict[str, Any]:
    """A copy with the Unified Procedure Step Performed Procedure Sequence: start and end
    DateTime and an Output Information Sequence item per (series, retrieve location)."""
    grouped: dict[tuple[str, str, str | None, str | None], list[OutputReference]] = {}
    for output in outputs:
        key = (output.study_uid, output.series_uid, output.retrieve_ae, output.retrieve_url)
        grouped.setdefault(key, []).append(output)
    output_items: list[dict[str, Any]] = []
    for (study, series, ae, url), refs in grouped.items():
        entry: dict[str, Any] = {
            TYPE_OF_INSTANCES: element("CS", "DICOM"),
            STUDY_UID: element("UI", study),
            SERIES_UID: element("UI", series),
            REFERENCED_SOPS: sequence(
                *(
                    {
                        REFERENCED_CLASS: element("UI", ref.sop_class_uid),
                        REFERENCED_INSTANCE: element("UI", ref.sop_uid),
                    }
                    for ref in refs
                )
            ),
        }
        if ae:
            entry[DICOM_RETRIEVAL] = sequence({RETRIEVE_AE: element("AE", ae)})
        if url:
            entry[WADO_RS_RETRIEVAL] = sequence({RETRIEVE_URL: element("UR", url)})
        output_items.append(entry)
    performed = {
        PERFORMED_START: element("DT", dicom_datetime(started_at)),
        PERFORMED_END: element("DT", dicom_datetime(ended_at)),
        OUTPUT_INFORMATION: sequence(*output_items),
    }
    updated = copy.deepcopy(dataset)
    updated[PERFORMED_PROCEDURE] = sequence(performed)
    return updated


def completion_ready(dataset: Mapping[str, Any]) -> bool:
    """The final state requirement we check before COMPLETED: a Performed Procedure
    Sequence item with an end DateTime (PS3.4 Table CC.2.5-3)."""
    performed = items(dataset, PERFORMED_PROCEDURE)
    return bool(performed) and value(performed[0], PERFORMED_END) is not None


def public(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The workitem as shown to clients: never the Transaction UID (PS3.4 CC.2.5.1.3)."""
    return {tag: entry for tag, entry in sorted(dataset.items()) if tag != TRANSACTION_UID}


# -- matching (QIDO-RS / C-FIND for UPS) ------------------------------------------------

CONTROL_KEYS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})


def resolve_key(key: str) -> list[str]:
    """``ScheduledWorkitemCodeSequence.CodeValue`` or ``00404018.00080100`` -> tags.

    Raises
    ------
    UpsError
        0x0106 (HTTP 400) for a name that is no DICOM keyword or tag.
    """
    tags: list[str] = []
    for part in key.split("."):
        if re.fullmatch(r"[0-9A-Fa-f]{8}", part):
            tags.append(part.upper())
            continue
        tag = tag_for_keyword(part)
        if tag is None:
            raise UpsError(INVALID_ATTRIBUTE_VALUE, f"{part[:64]!r} is not a DICOM keyword")
        tags.append(f"{tag:08X}")
    return tags


def _vr(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"


def _text(entry: Any) -> str:
    if isinstance(entry, dict):  # PN
        return str(entry.get("Alphabetic", ""))
    return str(entry)


def _matches_value(vr: str, wanted: str, values: list[Any]) -> bool:
    if wanted == "":
        return True  # universal matching
    if vr == "UI":
        choices = {uid.strip() for uid in wanted.replace("\\", ",").split(",")}
        return any(_text(v) in choices for v in values)
    if vr in ("DA", "DT", "TM") and "-" in wanted and not re.fullmatch(r"[\d.]+[+-]\d{4}", wanted):
        low, _, high = wanted.partition("-")
        return any(
            (not low or _text(v)[: len(low)] >= low) and (not high or _text(v)[: len(high)] <= high)
            for v in values
        )
    if "*" in wanted or "?" in wanted:
        return any(fnmatch.fnmatchcase(_text(v), wanted) for v in values)
    return any(_text(v) == wanted for v in values)


def _match_path(dataset: Mapping[str, Any], tags: list[str], wanted: str) -> bool:
    head, rest = tags[0], tags[1:]
    if rest:
        candidates = items(dataset, head)
        return any(_match_path(item, rest, wanted) for item in candidates) or (
            wanted == "" and not candidates
        )
    entry = dataset.get(head)
    values = list(entry.get("Value") or []) if isinstance(entry, Mapping) else []
    if wanted == "":
        return True
    return _matches_value(_vr(head), wanted, values)


def parse_query(
    query: Iterable[tuple[str, str]],
) -> tuple[list[tuple[list[str], str]], dict[str, str]]:
    """Split QIDO parameters into matching keys (as tag paths) and control parameters."""
    keys: list[tuple[list[str], str]] = []
    controls: dict[str, str] = {}
    for name, wanted in query:
        if name in CONTROL_KEYS:
            controls[name] = wanted
            continue
        tags = resolve_key(name)
        if tags[-1] == TRANSACTION_UID:
            raise UpsError(INVALID_ATTRIBUTE_VALUE, "the Transaction UID cannot be matched")
        keys.append((tags, wanted))
    return keys, controls


def matches(dataset: Mapping[str, Any], keys: Iterable[tuple[list[str], str]]) -> bool:
    return all(_match_path(dataset, tags, wanted) for tags, wanted in keys)


def describe_key(tags: list[str]) -> str:
    return ".".join(keyword_for_tag(int(tag, 16)) or tag for tag in tags)
