"""Result objects: highdicom SEG + TID 1500 SR built from a prediction and a template.

The names below are imported on first use, so that ``node.results.kinds`` (which the
configuration reads) does not pull highdicom, MONAI and torch into the node's start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.results.build import (
        SEG_SERIES_NUMBER,
        SR_SERIES_NUMBER,
        ResultSet,
        build_results,
        series_description,
    )
    from node.results.provenance import processing_equipment
    from node.results.seg import build_seg
    from node.results.sr import SOPReference, build_sr
    from node.results.template import (
        UCUM_UNITS,
        ResultTemplate,
        default_template_dir,
        load_template,
        load_template_by_name,
    )
    from node.results.uids import ResultUIDs, derive_uid, instance_set_hash

#: Exported name → the module that defines it.
_LAZY = {
    "SEG_SERIES_NUMBER": "build",
    "SR_SERIES_NUMBER": "build",
    "ResultSet": "build",
    "build_results": "build",
    "series_description": "build",
    "processing_equipment": "provenance",
    "build_seg": "seg",
    "SOPReference": "sr",
    "build_sr": "sr",
    "UCUM_UNITS": "template",
    "ResultTemplate": "template",
    "default_template_dir": "template",
    "load_template": "template",
    "load_template_by_name": "template",
    "ResultUIDs": "uids",
    "derive_uid": "uids",
    "instance_set_hash": "uids",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
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
