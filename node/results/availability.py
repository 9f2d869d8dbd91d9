"""Which result kinds a prediction can fill, so that the worker skips the others.

A destination's profile lists kinds for every rule that sends to it, but a routine
fills only some: an image-to-image routine gives no label map (no SEG, SR, GSPS or SC),
a segmentation without ``explain_label`` gives no attribution map (no ``pmap``,
``heatmap_sc``). The worker drops such tags before building and records why in the
job; a KO lists what was built.
"""

from __future__ import annotations

from collections.abc import Iterable

from node.contract.kinds import ATTRIBUTION_KINDS, DERIVED_KINDS, ResultKind, tag_kind
from node.contract.plugin import Prediction

#: Kinds drawn from the label map (or, for SR, GSPS and SC, from findings and boxes).
_LABEL_MAP_KINDS = (
    ResultKind.SEG,
    ResultKind.LABELMAP_SEG,
    ResultKind.FRACTIONAL_SEG,
)
_FINDING_KINDS = (ResultKind.SR, ResultKind.GSPS, ResultKind.SC)


def missing_input(prediction: Prediction, kind: ResultKind) -> str | None:
    """Why ``prediction`` cannot fill ``kind``, or None when it can."""
    if kind in ATTRIBUTION_KINDS and prediction.attribution is None:
        return "the plugin gives no attribution map"
    if kind in DERIVED_KINDS and prediction.derived_image is None:
        return "the plugin gives no derived image"
    if kind in _LABEL_MAP_KINDS and prediction.label_map is None:
        return "the plugin gives no label map"
    if (
        kind in _FINDING_KINDS
        and prediction.label_map is None
        and not prediction.classifications
        and not prediction.detections
    ):
        return "the plugin gives no label map, classifications or detections"
    return None


def unavailable_tags(prediction: Prediction, tags: Iterable[str]) -> dict[str, str]:
    """``{tag: reason}`` for the tags ``prediction`` cannot fill.

    A KO is never dropped here: it lists what was built (none built: no KO).
    """
    reasons: dict[str, str] = {}
    for tag in set(tags):
        kind = tag_kind(tag)
        if kind is ResultKind.KO:
            continue
        reason = missing_input(prediction, kind)
        if reason is not None:
            reasons[tag] = reason
    return reasons
