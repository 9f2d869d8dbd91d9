"""Key Object Selection listing the result objects a destination receives.

Title DCM 113030 "Manifest" (CID 7010), the algorithm as device observer, and a
description naming the routine; its evidence is the listed objects (same study).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.contract.template import ResultTemplate
from node.results.identity import SeriesIdentity
from node.results.provenance import device_observer, instance_arguments, set_general_equipment

log = logging.getLogger(__name__)

#: Document title (CID 7010).
MANIFEST = CodedConcept("113030", "DCM", "Manifest")


def build_ko(
    template: ResultTemplate,
    objects: Sequence[Dataset],
    *,
    series: SeriesIdentity,
    sop_instance_uid: str,
) -> hd.ko.KeyObjectSelectionDocument:
    """A KOS whose content lists ``objects`` (the result objects, in sending order)."""
    if not objects:
        raise ValueError("a Key Object Selection needs at least one object to list")
    algorithm = template.algorithm
    content = hd.ko.KeyObjectSelection(
        document_title=MANIFEST,
        referenced_objects=list(objects),
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device_observer(template),
        ),
        description=f"Results of {algorithm.name} {algorithm.version}"[:1024],
    )
    ko = hd.ko.KeyObjectSelectionDocument(
        evidence=list(objects),
        content=content,
        **instance_arguments(template, series, sop_instance_uid),
    )
    set_general_equipment(ko, series)
    log.info("ko built sop_instance_uid=%s objects=%d", sop_instance_uid, len(objects))
    return ko
