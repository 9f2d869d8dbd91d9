"""The synthetic abdomen phantom: valid geometry, labels consistent with the image, variety."""

from __future__ import annotations

import numpy as np
import pytest

from node.contract.assemble import assemble_volume
from tools.synthetic.abdomen_ct import (
    BODY,
    KIDNEYS,
    LABEL_NAMES,
    LIVER,
    LUNGS,
    SPLEEN,
    make_abdomen_ct,
)

SMALL = {"n_slices": 60, "rows": 96, "columns": 96, "pixel_spacing_mm": 4.0}


def test_labels_follow_volume_order_and_attenuation() -> None:
    datasets, truth = make_abdomen_ct(slice_thickness_mm=6.0, seed=1, **SMALL)
    volume = assemble_volume(datasets)
    assert truth.labels.shape == volume.shape
    assert set(np.unique(truth.labels)) == {0, *LABEL_NAMES}
    hu = volume.array
    mean = {label: float(hu[truth.labels == label].mean()) for label in LABEL_NAMES}
    assert mean[LUNGS] < -700
    assert mean[KIDNEYS] > mean[LIVER] > 40 and mean[SPLEEN] > 40
    assert float(hu[truth.labels == 0].mean()) < -500  # air and table outside the body
    assert datasets[0].BodyPartExamined == "ABDOMEN"


def test_mirrored_storage_keeps_labels_aligned() -> None:
    plain, truth = make_abdomen_ct(slice_thickness_mm=6.0, seed=2, **SMALL)
    flipped, truth_flipped = make_abdomen_ct(
        slice_thickness_mm=6.0, seed=2, flip_left_right=True, **SMALL
    )
    a, b = assemble_volume(plain), assemble_volume(flipped)
    # Columns and (through the normal) slices are reversed; anatomy is the same.
    assert np.array_equal(truth_flipped.labels, truth.labels[::-1, :, ::-1])
    assert np.allclose(b.array[:, :, :], a.array[::-1, :, ::-1], atol=0)


def test_liver_is_on_the_patients_right_and_spleen_on_the_left() -> None:
    datasets, truth = make_abdomen_ct(slice_thickness_mm=6.0, seed=3, **SMALL)
    volume = assemble_volume(datasets)
    columns = np.arange(volume.shape[2])
    x = volume.affine[0, 0] * columns + volume.affine[0, 3]  # LPS x: + is patient left
    liver_x = x[np.nonzero(truth.labels == LIVER)[2]].mean()
    spleen_x = x[np.nonzero(truth.labels == SPLEEN)[2]].mean()
    assert liver_x < 0 < spleen_x


def test_seeds_vary_anatomy_and_are_deterministic() -> None:
    _, a = make_abdomen_ct(slice_thickness_mm=6.0, seed=4, **SMALL)
    _, again = make_abdomen_ct(slice_thickness_mm=6.0, seed=4, **SMALL)
    _, b = make_abdomen_ct(slice_thickness_mm=6.0, seed=5, **SMALL)
    assert np.array_equal(a.labels, again.labels)
    assert a.volumes_cm3 != b.volumes_cm3
    for label in (LIVER, SPLEEN, KIDNEYS):
        assert a.volumes_cm3[label] == pytest.approx(b.volumes_cm3[label], rel=0.6)
    assert a.volumes_cm3[BODY] > a.volumes_cm3[LIVER] > a.volumes_cm3[KIDNEYS]
