"""Write a synthetic lung-segmentation evaluation dataset (chest phantoms + reference SEGs).

Each case is a :func:`~tools.synthetic.chest_ct.make_chest_ct` series and a DICOM SEG
(highdicom, segment algorithm type MANUAL) of the phantom's analytic lungs sampled at
voxel centres. ``shift_voxels`` moves the reference masks along the image columns
(a deliberately wrong reference, to check that Dice and HD95 react as expected).
Synthetic data only.

    python -m tools.evaluation_example DIR [--cases N] [--shift-voxels K]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from node.contract.assemble import assemble_volume
from node.contract.template import ResultTemplate, load_template_by_name
from node.contract.volume import Volume
from node.evaluation.dataset import CASES_DIR
from node.results.uids import derive_uid
from tools.synthetic.chest_ct import ChestPhantomTruth, Ellipsoid, make_chest_ct, write_series

#: Label values of the ct_lungs template.
RIGHT_LUNG, LEFT_LUNG = 1, 2


def _inside(points: np.ndarray, ellipsoid: Ellipsoid) -> np.ndarray:
    centre = np.asarray(ellipsoid.center_mm)
    axes = np.asarray(ellipsoid.semi_axes_mm)
    return np.sum(((points - centre) / axes) ** 2, axis=-1) <= 1.0


def truth_label_map(volume: Volume, truth: ChestPhantomTruth) -> np.ndarray:
    """The phantom's analytic lungs (1 right, 2 left) at the volume's voxel centres."""
    slices, rows, columns = volume.shape
    k, j, i = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(columns), indexing="ij")
    index = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    points = (index @ volume.affine.T)[..., :3]
    right = _inside(points, truth.right_lung)
    if truth.right_lung_max_x_mm is not None:
        right &= points[..., 0] <= truth.right_lung_max_x_mm
    left = _inside(points, truth.left_lung)
    if truth.left_lung_min_x_mm is not None:
        left &= points[..., 0] >= truth.left_lung_min_x_mm
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[right] = RIGHT_LUNG
    labels[left & ~right] = LEFT_LUNG
    return labels


def shift_columns(label_map: np.ndarray, voxels: int) -> np.ndarray:
    """Move a label map by ``voxels`` columns (positive: towards higher column index)."""
    shifted = np.zeros_like(label_map)
    if voxels >= 0:
        shifted[..., voxels:] = label_map[..., : label_map.shape[-1] - voxels]
    else:
        shifted[..., :voxels] = label_map[..., -voxels:]
    return shifted


def reference_seg(
    volume: Volume,
    label_map: np.ndarray,
    template: ResultTemplate,
    *,
    labels: Sequence[str] | None = None,
    seed: str = "",
) -> hd.seg.Segmentation:
    """A BINARY SEG of ``label_map`` coded with the template's segments (MANUAL algorithm).

    ``labels`` replaces the segment labels (e.g. to check matching by coded type).
    """
    descriptions = []
    pixels = np.zeros((*volume.shape, len(template.segments)), dtype=np.uint8)
    for number, segment in enumerate(template.segments, start=1):
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=labels[number - 1] if labels else segment.label,
            segmented_property_category=segment.category.concept,
            segmented_property_type=segment.type.concept,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=derive_uid(
                "reference-tracking", volume.series_instance_uid, seed, str(number)
            ),
            tracking_id=f"reference {segment.tracking_id}",
        )
        if segment.type_modifier is not None:
            item = description.SegmentedPropertyTypeCodeSequence[0]
            item.SegmentedPropertyTypeModifierCodeSequence = [segment.type_modifier.concept]
        descriptions.append(description)
        pixels[..., number - 1] = label_map == segment.label_value
    return hd.seg.Segmentation(
        source_images=list(volume.datasets),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derive_uid("reference-series", volume.series_instance_uid, seed),
        series_number=9901,
        sop_instance_uid=derive_uid("reference-instance", volume.series_instance_uid, seed),
        instance_number=1,
        manufacturer="ainode synthetic reference",
        manufacturer_model_name="chest phantom truth",
        software_versions="1",
        device_serial_number="0",
        series_description="Reference lungs SEG",
        omit_empty_frames=False,
    )


def write_lung_dataset(
    root: Path,
    *,
    cases: int = 2,
    shift_voxels: int = 0,
    labels: Sequence[str] | None = None,
    phantom: dict[str, object] | None = None,
) -> list[Path]:
    """Write ``cases`` phantom cases (seeds 0, 1, ...) under ``root/cases``; their directories."""
    template = load_template_by_name("ct_lungs")
    options: dict[str, object] = {
        "n_slices": 40,
        "rows": 128,
        "columns": 128,
        "pixel_spacing_mm": 3.0,
        "slice_thickness_mm": 5.0,
    }
    options.update(phantom or {})
    written = []
    for seed in range(cases):
        datasets, truth = make_chest_ct(seed=seed, **options)  # type: ignore[arg-type]
        directory = root / CASES_DIR / f"phantom-{seed:03d}"
        write_series(datasets, directory)
        volume = assemble_volume(datasets)
        label_map = shift_columns(truth_label_map(volume, truth), shift_voxels)
        seg: Dataset = reference_seg(volume, label_map, template, labels=labels, seed=str(seed))
        seg.save_as(directory / "reference-seg.dcm", enforce_file_format=True)
        written.append(directory)
    return written


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a developer tool
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--shift-voxels", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_lung_dataset(
        args.directory, cases=args.cases, shift_voxels=args.shift_voxels
    ):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
