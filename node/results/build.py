"""The one call the job worker makes: prediction in, result objects out.

Which objects are built is given as file tags (:mod:`node.contract.kinds`), by default
``seg`` + ``sr``. Output series numbers are fixed per kind (:data:`SERIES_NUMBERS`)
so results sort after the acquired series in every viewer. Series descriptions come
from the template (``"AI lungs SEG"``, ``"AI lungs SR"``…); a revision after the first
adds ``" (rev N, supersedes earlier)"``. All UIDs are derived from the input
(:mod:`node.results.uids`): building again from the same series gives the same UIDs, so
a re-send replaces the earlier objects; a series that gained instances gives new ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import highdicom as hd
from pydicom.dataset import Dataset

from node.contract.kinds import (
    ATTRIBUTION_KINDS,
    BUILD_ORDER,
    DERIVED_KINDS,
    ResultKind,
    tag_kind,
)
from node.contract.plugin import Prediction
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results.analysis import Analysis
from node.results.derived import build_derived_sc_series, build_derived_series
from node.results.findings import ImageFindings
from node.results.findings_gsps import build_findings_gsps
from node.results.findings_sc import build_findings_sc_series, capture_keys
from node.results.findings_sr import finding_groups
from node.results.gsps import build_gsps
from node.results.heatmap import build_heatmap_sc_series
from node.results.ko import build_ko
from node.results.plan import buildable_tags
from node.results.pmap import build_parametric_map, build_parametric_maps_2d
from node.results.radiomics import RadiomicsResult
from node.results.registration import build_registration
from node.results.sc import NOT_FOR_DIAGNOSIS, build_sc_series, frame_keys
from node.results.seg import build_seg
from node.results.source import buildable_volume, character_set, set_character_set
from node.results.sr import SOPReference, build_sr
from node.results.uids import ResultUIDs, derive_uid, instance_set_hash

log = logging.getLogger(__name__)

#: Series Number of each kind of result series.
SERIES_NUMBERS: dict[ResultKind, int] = {
    ResultKind.SEG: 9001,
    ResultKind.SR: 9002,
    ResultKind.LABELMAP_SEG: 9003,
    ResultKind.FRACTIONAL_SEG: 9004,
    ResultKind.GSPS: 9005,
    ResultKind.SC: 9006,
    ResultKind.KO: 9007,
    ResultKind.REG: 9010,
    ResultKind.PMAP: 9021,
    ResultKind.HEATMAP_SC: 9022,
    ResultKind.DERIVED: 9023,
    ResultKind.DERIVED_SC: 9024,
}
#: Series Number of every AI SEG series.
SEG_SERIES_NUMBER = SERIES_NUMBERS[ResultKind.SEG]
#: Series Number of every AI SR series.
SR_SERIES_NUMBER = SERIES_NUMBERS[ResultKind.SR]

#: What follows the template's series description, per kind.
KIND_LABELS: dict[ResultKind, str] = {
    ResultKind.SEG: "SEG",
    ResultKind.LABELMAP_SEG: "SEG labelmap",
    ResultKind.FRACTIONAL_SEG: "SEG probability",
    ResultKind.SR: "SR",
    ResultKind.GSPS: "GSPS",
    ResultKind.SC: f"SC {NOT_FOR_DIAGNOSIS}",
    ResultKind.KO: "KO",
    ResultKind.REG: "REG",
    ResultKind.PMAP: "attribution map",
    ResultKind.HEATMAP_SC: f"heat map {NOT_FOR_DIAGNOSIS}",
    ResultKind.DERIVED: "derived",
    ResultKind.DERIVED_SC: "derived SC",
}
_SEG_TYPES = {
    ResultKind.SEG: "BINARY",
    ResultKind.LABELMAP_SEG: "LABELMAP",
    ResultKind.FRACTIONAL_SEG: "FRACTIONAL",
}


@dataclass(frozen=True)
class ResultSet:
    """The DICOM objects of one result, by file tag, ready to store or send."""

    objects: dict[str, list[Dataset]]
    uids: ResultUIDs
    revision: int
    #: Seconds spent building each tag (for job events and benchmarks).
    seconds: dict[str, float] = field(default_factory=dict)
    #: Radiomics features of the segments whose template entry asks for them.
    radiomics: RadiomicsResult | None = None

    @property
    def seg(self) -> hd.seg.Segmentation:
        """The BINARY SEG (KeyError when it was not built)."""
        return self.objects[ResultKind.SEG.value][0]  # type: ignore[return-value]

    @property
    def sr(self) -> hd.sr.Comprehensive3DSR:
        """The SR that references the BINARY SEG (KeyError when it was not built)."""
        return self.objects[ResultKind.SR.value][0]  # type: ignore[return-value]

    @property
    def datasets(self) -> list[Dataset]:
        """Every object, SEGs first, then SRs, GSPS, SC images and KOs."""
        return [dataset for _, dataset in self.tagged()]

    def tagged(self) -> list[tuple[str, Dataset]]:
        """``(tag, dataset)`` pairs in build order."""
        return [(tag, dataset) for tag, datasets in self.objects.items() for dataset in datasets]

    @property
    def sr_reference(self) -> SOPReference:
        """Reference to the SR, to pass as ``predecessor_sr`` of the next revision."""
        return SOPReference.from_dataset(self.sr)


def series_description(template: ResultTemplate, kind: str, revision: int) -> str:
    """``"<template description> <kind>"``, with the revision note after the first.

    The note shrinks to ``" (rev N)"`` where the full one would not fit in 64 characters.
    """
    text = f"{template.output.series_description} {kind}"
    if revision > 1:
        note = f" (rev {revision}, supersedes earlier)"
        if len(text) + len(note) > 64:
            note = f" (rev {revision})"
        text += note
    return text[:64]


def _copy_patient_and_study(dataset: Dataset, source: Dataset) -> None:
    """Patient and Study IE attributes of the source on every object.

    highdicom copies them from the first evidence item, which for a KO is another
    result object; copying from the source makes every object of the study say the
    same (dcentvfy checks this).
    """
    if isinstance(dataset, hd.SOPClass):
        dataset.copy_patient_and_study_information(source)


def _build_reg(
    volume: Volume,
    prediction: Prediction,
    template: ResultTemplate,
    uids: ResultUIDs,
    revision: int,
) -> Dataset:
    """The Spatial Registration of ``prediction.registration``.

    Its UIDs also depend on the prior's instances: another prior gives another object.
    """
    registration = prediction.registration
    assert registration is not None  # build_results drops 'reg' without one
    prior = instance_set_hash(uid for _, uid in registration.source_instances)
    return build_registration(
        volume,
        registration,
        template,
        series_instance_uid=derive_uid(*uids.input_key, "reg-series", prior),
        sop_instance_uid=derive_uid(*uids.input_key, "reg-instance", prior),
        series_number=SERIES_NUMBERS[ResultKind.REG],
        series_description=series_description(template, KIND_LABELS[ResultKind.REG], revision),
    )


def _ordered(tags: Iterable[str]) -> list[str]:
    return sorted(set(tags), key=lambda tag: (BUILD_ORDER.index(tag_kind(tag)), tag))


def _build_image_kind(
    volume: Volume,
    prediction: Prediction,
    template: ResultTemplate,
    kind: ResultKind,
    tag: str,
    uids: ResultUIDs,
    description: str,
) -> list[Dataset]:
    """Parametric Map, heat-map SC, derived series or derived SC of one prediction."""
    series = {
        "series_instance_uid": uids.series_uid(tag),
        "series_number": SERIES_NUMBERS[kind],
        "series_description": description,
    }
    # Per source image; a frame of a multi-frame 2D image is keyed "<uid>/<frame>".
    per_frame = {key: uids.instance_uid(tag, key) for key in frame_keys(volume)}
    if kind in ATTRIBUTION_KINDS:
        if prediction.attribution is None:
            raise TemplateError(f"result kind {kind.value!r} needs an attribution map")
        if kind is ResultKind.PMAP and volume.is_2d:
            return list(
                build_parametric_maps_2d(
                    volume,
                    prediction.attribution,
                    template,
                    sop_instance_uid=per_frame,
                    **series,  # type: ignore[arg-type]
                )
            )
        if kind is ResultKind.PMAP:
            return [
                build_parametric_map(
                    volume,
                    prediction.attribution,
                    template,
                    sop_instance_uid=uids.instance_uid(tag),
                    **series,  # type: ignore[arg-type]
                )
            ]
        return list(
            build_heatmap_sc_series(
                volume,
                prediction.attribution,
                template,
                sop_instance_uid=per_frame,
                **series,  # type: ignore[arg-type]
            )
        )
    if prediction.derived_image is None:
        raise TemplateError(f"result kind {kind.value!r} needs a derived image")
    if kind is ResultKind.DERIVED:
        # One derived instance per source instance (a multi-frame one keeps its frames).
        per_source = {uid: uids.instance_uid(tag, uid) for uid in volume.sop_instance_uids}
        return list(
            build_derived_series(
                volume,
                prediction.derived_image,
                template,
                sop_instance_uid=per_source,
                **series,  # type: ignore[arg-type]
            )
        )
    return list(
        build_derived_sc_series(
            volume,
            prediction.derived_image,
            template,
            sop_instance_uid=per_frame,
            **series,  # type: ignore[arg-type]
        )
    )


def build_results(
    volume: Volume,
    prediction: Prediction,
    template: ResultTemplate,
    *,
    revision: int = 1,
    predecessor_sr: SOPReference | Dataset | None = None,
    predecessors: Mapping[str, SOPReference | Dataset] | None = None,
    tags: Iterable[str] | None = None,
) -> ResultSet:
    """Build the result objects of one prediction.

    Parameters
    ----------
    volume
        The source series as assembled for the routine.
    prediction
        The routine's label map, measurements, findings and probabilities (label
        values and keys from the template).
    template
        The routine's result template.
    revision
        1 for the first result of a source series; the worker increments it when the
        series changed and results are sent again.
    predecessor_sr
        The SR of the previous revision (a :class:`SOPReference` or the dataset);
        the new SR lists it in PredecessorDocumentsSequence. If it is the very SR this
        input produces (the same instances were received again), it is not recorded:
        the objects come out with the same UIDs as before and replace them on re-send.
    predecessors
        The same per SR tag (``{"sr.labelmap_seg": …}``) for SR variants;
        ``predecessor_sr`` is the one of ``sr``.
    tags
        File tags to build (:func:`node.contract.kinds.profile_tags` of the
        destinations' profiles); what they need is built too. Default: SEG + SR, or
        the SR alone for a prediction without a label map.

    A prediction without a label map (a classifier or detector) gives no SEG: its SR
    references none (an SR tag's SEG qualifier is then ignored), and a KO lists what
    was built. Asking for a SEG kind explicitly is an error; the worker leaves SEG
    kinds out with a job event instead. Classifications and detections (template
    format 3) add SR groups, GSPS graphics and SC overlays
    (:mod:`node.results.findings`).

    Raises
    ------
    TemplateError
        The prediction does not match the template (or FRACTIONAL without
        probabilities, or a SEG kind without a label map).
    ValueError
        ``revision`` < 1, or an unknown tag.
    """
    if revision < 1:
        raise ValueError(f"revision must be at least 1, got {revision}")
    segmented = prediction.label_map is not None
    if segmented and not template.segments:
        raise TemplateError(
            f"template {template.name}: the prediction has a label map but the template "
            "declares no segments"
        )
    wanted = _ordered(buildable_tags(prediction, tags, template.name))
    previous: dict[str, SOPReference] = {}
    for tag, reference in {
        **(predecessors or {}),
        **({"sr": predecessor_sr} if predecessor_sr is not None else {}),
    }.items():
        previous[tag] = (
            SOPReference.from_dataset(reference) if isinstance(reference, Dataset) else reference
        )
    uids = ResultUIDs.for_volume(volume, template)
    # Anonymised sources lack Type 2 attributes and real character sets are not all in
    # highdicom's enum: the builders get headers they can use (node.results.source).
    charset = character_set(volume.datasets[0])
    volume = buildable_volume(volume)
    if all(tag_kind(tag) is ResultKind.REG for tag in wanted):
        # A registration alone (or nothing left to build): no label map to analyse.
        started = time.perf_counter()
        only = {tag: [_build_reg(volume, prediction, template, uids, revision)] for tag in wanted}
        for tag, (dataset,) in only.items():
            set_character_set(dataset, charset, f"result {tag}")
        log.info(
            "results built template=%s source_series_uid=%s tags=%s objects=%d revision=%d",
            template.name,
            volume.series_instance_uid,
            ",".join(only),
            len(only),
            revision,
        )
        return ResultSet(
            objects=only,
            uids=uids,
            revision=revision,
            seconds={tag: time.perf_counter() - started for tag in only},
        )
    analysis = Analysis(volume, prediction, template) if segmented else None
    findings = ImageFindings(volume, prediction, template, uids)
    tracking_uids = {s.label_value: uids.tracking_uid(s.label_value) for s in template.segments}
    objects: dict[str, list[Dataset]] = {}
    seconds: dict[str, float] = {}
    radiomics = None
    if analysis is not None and template.radiomics_classes:
        started = time.perf_counter()
        radiomics = analysis.radiomics  # computed once, before the SR that reports it
        seconds["radiomics"] = time.perf_counter() - started
    for tag in wanted:
        started = time.perf_counter()
        kind = tag_kind(tag)
        description = series_description(template, KIND_LABELS[kind], revision)
        identity = {
            "series_instance_uid": uids.series_uid(tag),
            "series_number": SERIES_NUMBERS[kind],
        }
        if kind in _SEG_TYPES:
            assert analysis is not None
            objects[tag] = [
                build_seg(
                    volume,
                    prediction,
                    template,
                    sop_instance_uid=uids.instance_uid(tag),
                    series_description=description,
                    revision=revision,
                    tracking_uids=tracking_uids,
                    segmentation_type=_SEG_TYPES[kind],
                    segment_numbers=analysis.segment_numbers,
                    **identity,  # type: ignore[arg-type]
                )
            ]
        elif kind is ResultKind.SR:
            seg_tag = tag.partition(".")[2] or ResultKind.SEG.value
            predecessor = previous.get(tag)
            instance_uid = uids.instance_uid(tag)
            if predecessor is not None and predecessor.sop_instance_uid == instance_uid:
                log.info(
                    "predecessor is this input's own SR, rebuilding the same objects sr_uid=%s",
                    instance_uid,
                )
                predecessor = None
            objects[tag] = [
                build_sr(
                    volume,
                    prediction,
                    template,
                    objects[seg_tag][0] if segmented else None,
                    sop_instance_uid=instance_uid,
                    revision=revision,
                    predecessor=predecessor,
                    series_description=description,
                    analysis=analysis,
                    extra_groups=finding_groups(findings),
                    **identity,  # type: ignore[arg-type]
                )
            ]
        elif kind is ResultKind.GSPS and (findings or analysis is None):
            objects[tag] = [
                build_findings_gsps(
                    findings,
                    analysis,
                    sop_instance_uid=uids.instance_uid(tag),
                    series_description=description,
                    tracking_uids=tracking_uids,
                    **identity,  # type: ignore[arg-type]
                )
            ]
        elif kind is ResultKind.GSPS:
            assert analysis is not None
            objects[tag] = [
                build_gsps(
                    analysis,
                    sop_instance_uid=uids.instance_uid(tag),
                    series_description=description,
                    tracking_uids=tracking_uids,
                    **identity,  # type: ignore[arg-type]
                )
            ]
        elif kind is ResultKind.SC and (findings or analysis is None):
            objects[tag] = list[Dataset](
                build_findings_sc_series(
                    findings,
                    analysis,
                    sop_instance_uid={
                        key: uids.instance_uid(tag, key) for key in capture_keys(findings, analysis)
                    },
                    series_description=description,
                    **identity,  # type: ignore[arg-type]
                )
            )
        elif kind is ResultKind.SC:
            assert analysis is not None
            objects[tag] = list(
                build_sc_series(
                    analysis,
                    sop_instance_uid={
                        uid: uids.instance_uid(tag, uid) for uid in volume.sop_instance_uids
                    },
                    series_description=description,
                    **identity,  # type: ignore[arg-type]
                )
            )
        elif kind is ResultKind.REG:
            objects[tag] = [_build_reg(volume, prediction, template, uids, revision)]
        elif kind in ATTRIBUTION_KINDS or kind in DERIVED_KINDS:
            objects[tag] = _build_image_kind(
                volume, prediction, template, kind, tag, uids, description
            )
        elif kind is ResultKind.KO:
            listed = [d for t in tag.partition(".")[2].split("+") for d in objects.get(t, [])]
            if not listed:
                log.warning("nothing to list, no KO built tag=%s", tag)
                objects[tag] = []
                continue
            objects[tag] = [
                build_ko(
                    template,
                    listed,
                    sop_instance_uid=uids.instance_uid(tag),
                    series_description=description,
                    **identity,  # type: ignore[arg-type]
                )
            ]
        for dataset in objects[tag]:
            _copy_patient_and_study(dataset, volume.datasets[0])
        seconds[tag] = time.perf_counter() - started
    # Once all are built: a KO is built from other results and highdicom checks theirs.
    for tag, datasets in objects.items():
        for dataset in datasets:
            set_character_set(dataset, charset, f"result {tag}")
    log.info(
        "results built template=%s source_series_uid=%s tags=%s objects=%d revision=%d %s",
        template.name,
        volume.series_instance_uid,
        ",".join(objects),
        sum(len(v) for v in objects.values()),
        revision,
        " ".join(f"{tag}_s={value:.2f}" for tag, value in seconds.items()),
    )
    return ResultSet(
        objects=objects,
        uids=uids,
        revision=revision,
        seconds=seconds,
        radiomics=radiomics,
    )
