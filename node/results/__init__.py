"""Result objects: highdicom SEG + TID 1500 SR built from a prediction and a template.

The names below are imported on first use, so that the start path (the exporter reads
``node.results.manifest``) does not pull highdicom, MONAI and torch into the node's start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.contract.template import (
        UCUM_UNITS,
        ResultTemplate,
        default_template_dir,
        load_template,
        load_template_by_name,
    )
    from node.results.build import (
        SEG_SERIES_NUMBER,
        SR_SERIES_NUMBER,
        ResultSet,
        build_results,
        series_description,
    )
    from node.results.provenance import processing_equipment
    from node.results.reference import SOPReference
    from node.results.seg.segmentation import build_seg
    from node.results.sr.tid1500 import build_sr
    from node.results.uids import ResultUIDs, derive_uid, instance_set_hash

#: Exported name → the module that defines it.
_LAZY = {
    "SEG_SERIES_NUMBER": "node.results.build",
    "SR_SERIES_NUMBER": "node.results.build",
    "ResultSet": "node.results.build",
    "build_results": "node.results.build",
    "series_description": "node.results.build",
    "processing_equipment": "node.results.provenance",
    "build_seg": "node.results.seg.segmentation",
    "SOPReference": "node.results.reference",
    "build_sr": "node.results.sr.tid1500",
    "UCUM_UNITS": "node.contract.template",
    "ResultTemplate": "node.contract.template",
    "default_template_dir": "node.contract.template",
    "load_template": "node.contract.template",
    "load_template_by_name": "node.contract.template",
    "ResultUIDs": "node.results.uids",
    "derive_uid": "node.results.uids",
    "instance_set_hash": "node.results.uids",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "SEG_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
    "UCUM_UNITS",
    "ResultSet",
    "ResultTemplate",
    "ResultUIDs",
    "SOPReference",
    "build_results",
    "build_seg",
    "build_sr",
    "default_template_dir",
    "derive_uid",
    "instance_set_hash",
    "load_template",
    "load_template_by_name",
    "processing_equipment",
    "series_description",
]
