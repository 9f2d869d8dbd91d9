"""Segmentation references (DICOM SEG, read with highdicom) and Dice / HD95 with MONAI.

Reference segments are matched to the template's segments by segment label
(case-insensitive), else by segmented property type code (and its modifier, e.g.
laterality, when the template has one). Reference pixels are taken on the case's
own images (``get_pixels_by_source_instance`` in volume order), so the SEG may list
frames in any order and omit empty ones.

Dice is :func:`monai.metrics.compute_dice`; the 95th-percentile Hausdorff distance is
:func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95`` and the
volume's voxel spacing, so it is in millimetres. Both masks are cropped to their joint
bounding box plus one voxel first (surface distances are unchanged; the distance
transform runs on far fewer voxels).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from pydicom.dataset import Dataset

from node.contract.template import CodeSpec, ResultTemplate, SegmentSpec
from node.contract.volume import Volume
from node.evaluation.dataset import DatasetError


@dataclass(frozen=True)
class SegmentScore:
    """Dice and HD95 of one segment of one case; ``note`` says why a value is None."""

    dice: float | None
    hd95_mm: float | None
    reference_voxels: int
    predicted_voxels: int
    note: str | None = None


def _code_key(item: Dataset) -> tuple[str, str]:
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    return str(value), str(item.CodingSchemeDesignator)


def _spec_key(code: CodeSpec) -> tuple[str, str]:
    return code.value, code.scheme


def _matches_type(description: Dataset, segment: SegmentSpec) -> bool:
    types = description.get("SegmentedPropertyTypeCodeSequence") or []
    if not types or _code_key(types[0]) != _spec_key(segment.type):
        return False
    if segment.type_modifier is None:
        return True
    modifiers = types[0].get("SegmentedPropertyTypeModifierCodeSequence") or []
    return any(_code_key(m) == _spec_key(segment.type_modifier) for m in modifiers)


def match_segments(seg: Dataset, template: ResultTemplate, where: Path | str) -> dict[int, int]:
    """``{template label value: reference segment number}`` for the segments found.

    Raises
    ------
    DatasetError
        When two reference segments match one template segment.
    """
    descriptions = list(seg.get("SegmentSequence") or [])
    matched: dict[int, int] = {}
    for segment in template.segments:
        by_label = [
            int(d.SegmentNumber)
            for d in descriptions
            if str(d.get("SegmentLabel", "")).strip().lower() == segment.label.strip().lower()
        ]
        candidates = by_label or [
            int(d.SegmentNumber) for d in descriptions if _matches_type(d, segment)
        ]
        if len(candidates) > 1:
            raise DatasetError(
                f"{where}: segments {', '.join(map(str, candidates))} all match template "
                f"segment {segment.label!r}; give each a distinct SegmentLabel"
            )
        if candidates:
            matched[segment.label_value] = candidates[0]
    return matched


def reference_masks(
    segs: tuple[Dataset, ...],
    paths: tuple[Path, ...],
    volume: Volume,
    template: ResultTemplate,
) -> dict[int, np.ndarray]:
    """Boolean reference masks ``{template label value: (slices, rows, columns)}``.

    Raises
    ------
    DatasetError
        A SEG that does not reference this case's images, that highdicom cannot
        read, or whose segments match a template segment twice (across SEGs too).
    """
    masks: dict[int, np.ndarray] = {}
    uids = list(volume.sop_instance_uids)
    for dataset, path in zip(segs, paths, strict=True):
        try:
            seg = hd.seg.Segmentation.from_dataset(dataset, copy=False)
        except Exception as exc:
            raise DatasetError(f"{path}: not a readable DICOM SEG: {exc}") from exc
        matched = match_segments(dataset, template, path)
        if not matched:
            labels = ", ".join(
                repr(str(d.get("SegmentLabel", ""))) for d in dataset.SegmentSequence
            )
            wanted = ", ".join(repr(s.label) for s in template.segments)
            raise DatasetError(
                f"{path}: no segment ({labels}) matches a template segment ({wanted}) by "
                "label or segmented property type"
            )
        referenced = {str(item[-1]) for item in seg.get_source_image_uids()}
        outside = referenced - set(uids)
        if outside:
            raise DatasetError(
                f"{path}: references {len(outside)} image(s) that are not in this case "
                f"(e.g. {sorted(outside)[0]})"
            )
        try:
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=uids,
                segment_numbers=list(matched.values()),
                assert_missing_frames_are_empty=True,
                rescale_fractional=True,
            )
        except Exception as exc:
            raise DatasetError(f"{path}: cannot read its frames on this case: {exc}") from exc
        for channel, label_value in enumerate(matched):
            if label_value in masks:
                raise DatasetError(
                    f"{path}: template segment {template.segment(label_value).label!r} "
                    "is already given by another SEG of this case"
                )
            # FRACTIONAL references are thresholded at 0.5 (rescaled to 0..1 above).
            masks[label_value] = np.asarray(pixels[..., channel]) >= 0.5
    return masks


def _crop(predicted: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    either = predicted | reference
    coordinates = np.nonzero(either)
    window = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coordinates)
    return predicted[window], reference[window]


def score_segment(
    predicted: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]
) -> SegmentScore:
    """Dice and HD95 (mm) of two boolean masks on the same grid.

    Both empty: Dice 1 (MONAI's ``ignore_empty=False`` convention), HD95 None.
    One empty: Dice 0, HD95 None (undefined).
    """
    n_ref, n_pred = int(reference.sum()), int(predicted.sum())
    if n_ref == 0 and n_pred == 0:
        return SegmentScore(1.0, None, 0, 0, "reference and prediction are both empty")
    pred_crop, ref_crop = _crop(predicted, reference)
    y_pred = torch.from_numpy(np.ascontiguousarray(pred_crop))[None, None].float()
    y = torch.from_numpy(np.ascontiguousarray(ref_crop))[None, None].float()
    dice = float(compute_dice(y_pred, y, include_background=True, ignore_empty=False)[0, 0])
    if n_ref == 0 or n_pred == 0:
        which = "reference" if n_ref == 0 else "prediction"
        return SegmentScore(dice, None, n_ref, n_pred, f"{which} is empty: HD95 undefined")
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument its own HD code passes (not ours to fix).
        warnings.filterwarnings("ignore", ".*always_return_as_numpy", FutureWarning)
        hd95 = float(
            compute_hausdorff_distance(
                y_pred, y, include_background=True, percentile=95, spacing=list(spacing)
            )[0, 0]
        )
    return SegmentScore(dice, hd95 if math.isfinite(hd95) else None, n_ref, n_pred)
