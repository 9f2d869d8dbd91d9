"""Cross-field and terminology checks of a parsed template (what pydantic cannot express
field by field): segment categories from CID 7150, types from CID 7151, modifiers from
CID 244, code meanings as DICOM gives them, unique keys, computable measurements.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from pydicom.sr.codedict import Collection

from node.contract.template_spec import (
    CATEGORY_CID,
    GEOMETRIC_UNITS,
    KEY_PATTERN,
    LATERALITY_CID,
    SH_MAX,
    STATISTIC_DERIVATIONS,
    TYPE_CID,
    CodeSpec,
    MeasurementSpec,
    TemplateDocument,
)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(root)"


def describe_validation_error(error: Any) -> str:
    location = _format_loc(tuple(error["loc"]))
    kind = error["type"]
    if kind == "extra_forbidden":
        reason = "unknown key"
    elif kind == "missing":
        reason = "required key is missing"
    else:
        reason = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {reason}"


def semantic_problems(document: TemplateDocument) -> list[tuple[str, str]]:
    """Cross-field and terminology checks pydantic cannot express field by field."""
    problems: list[tuple[str, str]] = []
    _check_concept(document.algorithm.family, "algorithm.family", problems)
    if document.procedure_reported is not None:
        _check_concept(document.procedure_reported, "procedure_reported", problems)

    segments = document.segments
    if not segments and (document.measurements or document.findings):
        # A template without segments (a registration's, a denoiser's) measures nothing.
        problems.append(("segments", "at least 1 item is needed for measurements and findings"))
    problems += _duplicates([s.label_value for s in segments], "segments", "label_value")
    problems += _duplicates([s.label for s in segments], "segments", "label")
    problems += _duplicates([s.tracking_id for s in segments], "segments", "tracking_id")
    for index, segment in enumerate(segments):
        where = f"segments[{index}]"
        _check_concept(segment.category, f"{where}.category", problems, cid=CATEGORY_CID)
        _check_concept(segment.type, f"{where}.type", problems, cid=TYPE_CID)
        if segment.type_modifier is not None:
            _check_concept(
                segment.type_modifier, f"{where}.type_modifier", problems, cid=LATERALITY_CID
            )
        if segment.anatomic_region is not None:
            _check_concept(segment.anatomic_region, f"{where}.anatomic_region", problems)
        if segment.radiomics is not None:
            problems += _radiomics_problems(segment.radiomics, where, document.format_version)
    if document.radiomics is not None and not any(s.radiomics for s in segments):
        problems.append(("radiomics", "settings given but no segment lists 'radiomics' classes"))

    measurements = document.measurements
    problems += _duplicates([m.key for m in measurements], "measurements", "key")
    for index, measurement in enumerate(measurements):
        where = f"measurements[{index}]"
        _check_concept(measurement.concept, f"{where}.concept", problems)
        if measurement.derivation is not None:
            _check_concept(measurement.derivation, f"{where}.derivation", problems)
        problems += _compute_problems(measurement, where, document.format_version)

    keys = {m.key for m in measurements}
    labels = {s.label_value for s in segments}
    problems += _duplicates([f.key for f in document.findings], "findings", "key")
    for index, finding in enumerate(document.findings):
        where = f"findings[{index}]"
        if document.format_version < 2:
            problems.append((where, "findings need format_version 2"))
        _check_concept(finding.concept, f"{where}.concept", problems)
        if (finding.rule is None) == (finding.values is None):
            problems.append((where, "give exactly one of 'rule' and 'values'"))
        if finding.rule is not None:
            rule = finding.rule
            if rule.measurement not in keys:
                problems.append(
                    (f"{where}.rule.measurement", f"{rule.measurement!r} is not a measurement key")
                )
            _check_concept(rule.then, f"{where}.rule.then", problems)
            if rule.otherwise is not None:
                _check_concept(rule.otherwise, f"{where}.rule.else", problems)
        for code_key, code in (finding.values or {}).items():
            if not KEY_PATTERN.match(code_key):
                problems.append(
                    (f"{where}.values.{code_key}", "keys are lower-case letters, digits, _")
                )
            _check_concept(code, f"{where}.values.{code_key}", problems)
        for position, label in enumerate(finding.segments or []):
            if label not in labels:
                problems.append(
                    (f"{where}.segments[{position}]", f"label value {label} is not a segment")
                )
    problems += _classification_detection_problems(document)
    return problems


def _classification_detection_problems(document: TemplateDocument) -> list[tuple[str, str]]:
    """Checks of ``classifications`` and ``detections`` (format 3)."""
    problems: list[tuple[str, str]] = []
    for section in ("classifications", "detections"):
        if getattr(document, section) and document.format_version < 3:
            problems.append((section, f"{section} need format_version 3"))
    classifications = document.classifications
    detections = document.detections
    seen: dict[str, str] = {}
    places = [(f"classifications[{i}]", c.key) for i, c in enumerate(classifications)]
    places += [(f"detections[{i}]", d.key) for i, d in enumerate(detections)]
    for where, key in places:
        if key in seen:
            problems.append(
                (
                    f"{where}.key",
                    f"duplicate {key!r} (also {seen[key]}; keys are unique across "
                    "classifications and detections)",
                )
            )
        else:
            seen[key] = where
    for index, spec in enumerate(classifications):
        where = f"classifications[{index}]"
        _check_concept(spec.concept, f"{where}.concept", problems)
        _check_concept(spec.present, f"{where}.present", problems)
        _check_concept(spec.absent, f"{where}.absent", problems)
        if (spec.present.scheme, spec.present.value) == (spec.absent.scheme, spec.absent.value):
            problems.append((f"{where}.absent", "must be a different code than 'present'"))
        if spec.finding_site is not None:
            _check_concept(spec.finding_site, f"{where}.finding_site", problems)
    for index, detection in enumerate(detections):
        where = f"detections[{index}]"
        _check_concept(detection.concept, f"{where}.concept", problems)
        if detection.category is not None:
            _check_concept(detection.category, f"{where}.category", problems, cid=CATEGORY_CID)
        if detection.finding_site is not None:
            _check_concept(detection.finding_site, f"{where}.finding_site", problems)
    return problems


def _compute_problems(
    measurement: MeasurementSpec, where: str, format_version: int
) -> list[tuple[str, str]]:
    if measurement.compute is None:
        return []
    if format_version < 2:
        return [(f"{where}.compute", "'compute' needs format_version 2")]
    allowed = GEOMETRIC_UNITS.get(measurement.compute)
    if allowed is not None and measurement.unit not in allowed:
        return [
            (
                f"{where}.unit",
                f"compute {measurement.compute!r} is reported in "
                f"{', '.join(sorted(allowed))}, not {measurement.unit!r}",
            )
        ]
    geometric = set().union(*GEOMETRIC_UNITS.values())
    if allowed is None and measurement.unit in geometric:
        return [
            (
                f"{where}.unit",
                f"compute {measurement.compute!r} is a statistic of the image values; "
                f"{measurement.unit!r} is a length, area or volume",
            )
        ]
    expected = STATISTIC_DERIVATIONS.get(measurement.compute)
    if expected is not None and measurement.derivation is not None:
        given = (measurement.derivation.scheme, measurement.derivation.value)
        if given != ("SCT", expected[0]):
            return [
                (
                    f"{where}.derivation",
                    f"compute {measurement.compute!r} has derivation SCT {expected[0]} "
                    f"{expected[1]}, not {given[0]} {given[1]}",
                )
            ]
    return []


def _radiomics_problems(
    classes: Sequence[str], where: str, format_version: int
) -> list[tuple[str, str]]:
    if format_version < 2:
        return [(f"{where}.radiomics", "'radiomics' needs format_version 2")]
    return [
        (f"{where}.radiomics[{index}]", f"duplicate class {name!r}")
        for index, name in enumerate(classes)
        if name in classes[:index]
    ]


def _duplicates(values: list[object], where: str, field_name: str) -> list[tuple[str, str]]:
    first_index: dict[object, int] = {}
    problems: list[tuple[str, str]] = []
    for index, value in enumerate(values):
        if value in first_index:
            problems.append(
                (
                    f"{where}[{index}].{field_name}",
                    f"duplicate {value!r} (also {where}[{first_index[value]}])",
                )
            )
        else:
            first_index[value] = index
    return problems


def _check_concept(
    code: CodeSpec, where: str, problems: list[tuple[str, str]], cid: int | None = None
) -> None:
    """Check code length per scheme, meaning against pydicom's dictionary, CID membership."""
    if len(code.value) > SH_MAX and code.scheme in ("SCT", "DCM"):
        problems.append((f"{where}.value", f"{code.scheme} code values are at most 16 characters"))
    meanings = _known_meanings().get((code.scheme, code.value))
    if meanings is not None and _normalise(code.meaning) not in {_normalise(m) for m in meanings}:
        expected = " or ".join(repr(m) for m in sorted(meanings))
        problems.append(
            (
                f"{where}.meaning",
                f"{code.scheme} {code.value} means {expected}, not {code.meaning!r}",
            )
        )
    if cid is not None and (code.scheme, code.value) not in _cid_members(cid):
        problems.append(
            (f"{where}.value", f"({code.scheme}, {code.value}) is not in DICOM CID {cid}")
        )


def _normalise(meaning: str) -> str:
    return " ".join(meaning.split()).casefold()


@functools.cache
def _known_meanings() -> dict[tuple[str, str], frozenset[str]]:
    """Meanings pydicom's dictionaries give each (scheme, value) of SCT and DCM.

    LOINC is left out: DICOM uses several names for some LOINC codes (a procedure
    and its report title share 24627-2).
    """
    table: dict[tuple[str, str], set[str]] = {}
    for scheme in ("SCT", "DCM"):
        for concept in Collection(scheme).concepts.values():
            table.setdefault((scheme, concept.value), set()).add(concept.meaning)
    return {key: frozenset(values) for key, values in table.items()}


@functools.cache
def _cid_members(cid: int) -> frozenset[tuple[str, str]]:
    collection = Collection(f"CID{cid}")
    return frozenset((c.scheme_designator, c.value) for c in collection.concepts.values())
