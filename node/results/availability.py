"""Which result kinds a prediction can fill, so that the worker skips the others.

A destination's profile lists kinds for every rule that sends to it, but a routine
fills only some: an image-to-image routine gives no label map (no SEG, SR, GSPS or SC),
a segmentation without ``explain_label`` gives no attribution map (no ``pmap``,
``heatmap_sc``). Each kind's builder says what it needs
(:meth:`node.results.builder.ResultBuilder.missing_input`, in
:data:`node.results.table.BUILDERS`). The worker drops such tags before building and
records why in the job; a KO lists what was built.
"""

from __future__ import annotations

from collections.abc import Iterable

from node.contract.kinds import ResultKind, tag_kind
from node.contract.plugin import Prediction
from node.results.table import BUILDERS


def missing_input(prediction: Prediction, kind: ResultKind) -> str | None:
    """Why ``prediction`` cannot fill ``kind``, or None when it can."""
    return BUILDERS[kind].missing_input(prediction)


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
