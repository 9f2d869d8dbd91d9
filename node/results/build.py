"""The one call the job worker makes: prediction in, result objects out.

Which objects are built is given as file tags (:mod:`node.contract.kinds`), by default
``seg`` + ``sr``; each kind is built by its entry of :data:`node.results.table.BUILDERS`,
in build order. Output series numbers are fixed per kind (:data:`SERIES_NUMBERS`)
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
    ResultKind,
)
from node.contract.plugin import Prediction
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results.analysis import Analysis
from node.results.builder import BuildContext, BuilderTable, kind_of
from node.results.findings import ImageFindings
from node.results.identity import SeriesIdentity
from node.results.plan import buildable_tags
from node.results.radiomics import RadiomicsResult
from node.results.reference import SOPReference
from node.results.source import buildable_volume, character_set, set_character_set
from node.results.table import BUILDERS
from node.results.uids import ResultUIDs

log = logging.getLogger(__name__)

#: Series Number of each kind of result series.
SERIES_NUMBERS: dict[str, int] = {builder.kind: builder.series_number for builder in BUILDERS}
#: Series Number of every AI SEG series.
SEG_SERIES_NUMBER = SERIES_NUMBERS[ResultKind.SEG]
#: Series Number of every AI SR series.
SR_SERIES_NUMBER = SERIES_NUMBERS[ResultKind.SR]

#: What follows the template's series description, per kind.
KIND_LABELS: dict[str, str] = {builder.kind: builder.label for builder in BUILDERS}


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


def build_results(
    volume: Volume,
    prediction: Prediction,
    template: ResultTemplate,
    *,
    revision: int = 1,
    predecessor_sr: SOPReference | Dataset | None = None,
    predecessors: Mapping[str, SOPReference | Dataset] | None = None,
    tags: Iterable[str] | None = None,
    builders: BuilderTable = BUILDERS,
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
    builders
        The builder of each kind, in build order (:data:`node.results.table.BUILDERS`).

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
    wanted = builders.ordered(buildable_tags(prediction, tags, template.name))
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

    def series_of(context: BuildContext, tag: str) -> SeriesIdentity:
        builder = builders.of_tag(tag)
        return SeriesIdentity.of(
            template,
            series_instance_uid=builder.series_instance_uid(context, tag),
            series_number=builder.series_number,
            series_description=series_description(template, builder.label, revision),
        )

    if all(kind_of(tag) == ResultKind.REG for tag in wanted):
        # A registration alone (or nothing left to build): no label map to analyse.
        started = time.perf_counter()
        context = BuildContext(
            volume, prediction, template, uids, revision, analysis=None, findings=None
        )
        only: dict[str, list[Dataset]] = {}
        for tag in wanted:
            only[tag] = builders.of_tag(tag).build(context, tag, series_of(context, tag)) or []
        for tag, datasets in only.items():
            for dataset in datasets:
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
    context = BuildContext(
        volume,
        prediction,
        template,
        uids,
        revision,
        analysis=analysis,
        findings=findings,
        tracking_uids={s.label_value: uids.tracking_uid(s.label_value) for s in template.segments},
        predecessors=previous,
    )
    objects = context.objects
    seconds: dict[str, float] = {}
    radiomics = None
    if analysis is not None and template.radiomics_classes:
        started = time.perf_counter()
        radiomics = analysis.radiomics  # computed once, before the SR that reports it
        seconds["radiomics"] = time.perf_counter() - started
    for tag in wanted:
        started = time.perf_counter()
        built = builders.of_tag(tag).build(context, tag, series_of(context, tag))
        if built is None:  # nothing to build (a KO with nothing to list)
            objects[tag] = []
            continue
        objects[tag] = built
        for dataset in built:
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
