"""The one call the job worker makes: prediction in, SEG + SR datasets out.

Output series numbers are fixed per kind (:data:`SEG_SERIES_NUMBER`,
:data:`SR_SERIES_NUMBER`) so results sort after the acquired series in every viewer.
Series descriptions come from the template (``"AI lungs SEG"``, ``"AI lungs SR"``);
a revision after the first adds ``" (rev N, supersedes earlier)"``. All UIDs are
derived from the input (:mod:`node.results.uids`): building again from the same
series gives the same UIDs, a series that gained instances gives new ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset

from node.results.seg import build_seg
from node.results.sr import SOPReference, build_sr
from node.results.template import ResultTemplate
from node.results.uids import ResultUIDs
from node.runtime.plugin import Prediction
from node.runtime.volume import Volume

log = logging.getLogger(__name__)

#: Series Number of every AI SEG series.
SEG_SERIES_NUMBER = 9001
#: Series Number of every AI SR series.
SR_SERIES_NUMBER = 9002


@dataclass(frozen=True)
class ResultSet:
    """The DICOM objects of one result, ready to store or send."""

    seg: hd.seg.Segmentation
    sr: hd.sr.Comprehensive3DSR
    uids: ResultUIDs
    revision: int

    @property
    def datasets(self) -> list[Dataset]:
        """SEG first, then the SR that references it."""
        return [self.seg, self.sr]

    @property
    def sr_reference(self) -> SOPReference:
        """Reference to this SR, to pass as ``predecessor_sr`` of the next revision."""
        return SOPReference.from_dataset(self.sr)


def series_description(template: ResultTemplate, kind: str, revision: int) -> str:
    """``"<template description> <kind>"``, with the revision note after the first."""
    text = f"{template.output.series_description} {kind}"
    if revision > 1:
        text += f" (rev {revision}, supersedes earlier)"
    return text[:64]


def build_results(
    volume: Volume,
    prediction: Prediction,
    template: ResultTemplate,
    *,
    revision: int = 1,
    predecessor_sr: SOPReference | Dataset | None = None,
) -> ResultSet:
    """Build the SEG and the SR of one prediction.

    Parameters
    ----------
    volume
        The source series as assembled for the routine.
    prediction
        The routine's label map and measurements (label values and keys from the
        template).
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

    Raises
    ------
    TemplateError
        The prediction does not match the template.
    ValueError
        ``revision`` < 1.
    """
    if revision < 1:
        raise ValueError(f"revision must be at least 1, got {revision}")
    predecessor = (
        SOPReference.from_dataset(predecessor_sr)
        if isinstance(predecessor_sr, Dataset)
        else predecessor_sr
    )
    uids = ResultUIDs.for_volume(volume, template)
    if predecessor is not None and predecessor.sop_instance_uid == uids.sr_instance:
        log.info(
            "predecessor is this input's own SR, rebuilding the same objects sr_uid=%s",
            uids.sr_instance,
        )
        predecessor = None
    tracking_uids = {s.label_value: uids.tracking_uid(s.label_value) for s in template.segments}
    seg = build_seg(
        volume,
        prediction,
        template,
        series_instance_uid=uids.seg_series,
        sop_instance_uid=uids.seg_instance,
        series_number=SEG_SERIES_NUMBER,
        series_description=series_description(template, "SEG", revision),
        revision=revision,
        tracking_uids=tracking_uids,
    )
    sr = build_sr(
        volume,
        prediction,
        template,
        seg,
        series_instance_uid=uids.sr_series,
        sop_instance_uid=uids.sr_instance,
        series_number=SR_SERIES_NUMBER,
        revision=revision,
        predecessor=predecessor,
        series_description=series_description(template, "SR", revision),
    )
    log.info(
        "results built template=%s source_series_uid=%s seg_uid=%s sr_uid=%s revision=%d",
        template.name,
        volume.series_instance_uid,
        uids.seg_instance,
        uids.sr_instance,
        revision,
    )
    return ResultSet(seg=seg, sr=sr, uids=uids, revision=revision)
