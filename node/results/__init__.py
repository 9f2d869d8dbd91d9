"""Result objects: highdicom SEG + TID 1500 SR built from a prediction and a template."""

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
from node.results.seg.segmentation import build_seg
from node.results.sr.tid1500 import SOPReference, build_sr
from node.results.uids import ResultUIDs, derive_uid, instance_set_hash

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
