"""The ct_lungs routine against the analytic truth of the synthetic chest phantom."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from node.contract.assemble import assemble_volume
from node.contract.plugin import InferencePlugin, Prediction, RunContext, check_input
from node.contract.volume import Volume
from node.errors import InputRejected
from plugins.ct_lungs import PLUGIN, CtLungsPlugin
from plugins.ct_lungs.segmentation import LEFT_LUNG, RIGHT_LUNG
from tools.synthetic.chest_ct import ChestPhantomTruth, make_chest_ct

Case = tuple[Volume, ChestPhantomTruth, Prediction]

CPU = RunContext(job_id=1, rule="test", device=torch.device("cpu"))


def _run(volume: Volume, context: RunContext = CPU) -> Prediction:
    plugin = CtLungsPlugin()
    plugin.load(context.device)
    check_input(plugin, volume)
    return plugin.run(volume, context)


def _case(**kwargs: object) -> Case:
    datasets, truth = make_chest_ct(**kwargs)  # type: ignore[arg-type]
    volume = assemble_volume(datasets)
    return volume, truth, _run(volume)


@pytest.fixture(scope="module")
def standard() -> Case:
    return _case()


@pytest.fixture(scope="module")
def mirrored() -> Case:
    return _case(flip_left_right=True)


@pytest.fixture(scope="module")
def touching() -> Case:
    return _case(touching_lungs=True, seed=5)


def _patient_centroid(volume: Volume, mask: np.ndarray) -> np.ndarray:
    slice_, row, column = (float(v.mean()) for v in np.nonzero(mask))
    return (volume.affine @ np.array([column, row, slice_, 1.0]))[:3]


def test_plugin_identity() -> None:
    assert PLUGIN is CtLungsPlugin
    assert issubclass(PLUGIN, InferencePlugin)
    assert (PLUGIN.name, PLUGIN.version, PLUGIN.template) == ("ct_lungs", "1.0.0", "ct_lungs")
    assert PLUGIN.accepts.modalities == ("CT",)


@pytest.mark.parametrize("name", ["standard", "mirrored", "touching"])
def test_lung_volumes_within_3_percent_of_analytic(
    name: str, request: pytest.FixtureRequest
) -> None:
    volume, truth, prediction = request.getfixturevalue(name)
    assert prediction.label_map.shape == volume.shape
    assert prediction.label_map.dtype == np.uint8
    assert set(np.unique(prediction.label_map)) == {0, RIGHT_LUNG, LEFT_LUNG}
    right = prediction.measurements[RIGHT_LUNG]
    left = prediction.measurements[LEFT_LUNG]
    assert right["volume_cm3"] == pytest.approx(truth.right_lung_cm3, rel=0.03)
    assert left["volume_cm3"] == pytest.approx(truth.left_lung_cm3, rel=0.03)
    # Partial volume at the blurred lung border raises the mean a little above the
    # noise-free value.
    assert right["mean_hu"] == pytest.approx(truth.right_lung_hu, abs=20)
    assert left["mean_hu"] == pytest.approx(truth.left_lung_hu, abs=20)


@pytest.mark.parametrize("name", ["standard", "mirrored", "touching"])
def test_right_lung_is_on_the_patients_right(name: str, request: pytest.FixtureRequest) -> None:
    volume, _, prediction = request.getfixturevalue(name)
    right_x = _patient_centroid(volume, prediction.label_map == RIGHT_LUNG)[0]
    left_x = _patient_centroid(volume, prediction.label_map == LEFT_LUNG)[0]
    assert right_x < 0 < left_x  # LPS: the patient's left is +x


def test_mirrored_storage_gives_the_mirrored_label_map(standard: Case, mirrored: Case) -> None:
    # Same seed, same anatomy and noise. Columns run the other way, and so does the
    # slice normal (row x column), so the volume's slices are stacked top down.
    assert np.array_equal(standard[0].array, mirrored[0].array[::-1, :, ::-1])
    assert np.array_equal(standard[2].label_map, mirrored[2].label_map[::-1, :, ::-1])


def test_trachea_is_not_labelled(standard: Case) -> None:
    volume, truth, prediction = standard
    tx, ty = truth.trachea_center_xy_mm
    columns = np.arange(volume.shape[2]) * volume.affine[0, 0] + volume.affine[0, 3]
    rows = np.arange(volume.shape[1]) * volume.affine[1, 1] + volume.affine[1, 3]
    z = np.arange(volume.shape[0]) * volume.affine[2, 2] + volume.affine[2, 3]
    in_tube = (columns[None, :] - tx) ** 2 + (rows[:, None] - ty) ** 2 <= truth.trachea_radius_mm**2
    trachea = (z > truth.carina_z_mm)[:, None, None] & in_tube[None]
    assert trachea.sum() > 100  # the phantom has a trachea...
    assert volume.array[trachea].mean() < -900  # ...of air...
    assert not prediction.label_map[trachea].any()  # ...that is not lung


def test_lungs_touching_each_other_are_split_at_the_midline(touching: Case) -> None:
    volume, _, prediction = touching
    x = np.arange(volume.shape[2]) * volume.affine[0, 0] + volume.affine[0, 3]
    labels = prediction.label_map
    right_x = x[np.nonzero(labels == RIGHT_LUNG)[2]]
    left_x = x[np.nonzero(labels == LEFT_LUNG)[2]]
    # The lungs meet at x = 0: a few voxels may land on the wrong side of the plane...
    wrong_side = np.count_nonzero(right_x > 0) + np.count_nonzero(left_x < 0)
    assert wrong_side < 0.001 * np.count_nonzero(labels)
    # ...but never more than three voxels (4.5 mm) away from it.
    assert right_x.max() < 4.5
    assert left_x.min() > -4.5


def test_vessels_inside_the_lungs_are_filled(standard: Case) -> None:
    volume, _, prediction = standard
    lungs = prediction.label_map != 0
    dense_in_lungs = volume.array[lungs] > 0
    assert dense_in_lungs.sum() > 100  # soft-tissue vessels are part of the lungs


def _small(**kwargs: object) -> Volume:
    options: dict[str, object] = {"rows": 128, "columns": 128, "pixel_spacing_mm": 3.0}
    options.update(kwargs)
    datasets, _ = make_chest_ct(**options)  # type: ignore[arg-type]
    return assemble_volume(datasets)


@pytest.mark.parametrize(
    ("volume_options", "reason"),
    [
        ({"n_slices": 30, "modality": "MR"}, "modality MR is not CT"),
        ({"n_slices": 10}, "10 slices; at least 20 are needed"),
        ({"n_slices": 30, "slice_thickness_mm": 12.0}, "slice spacing 12.00 mm is outside"),
        ({"n_slices": 30, "pixel_spacing_mm": 4.0, "rows": 96, "columns": 96}, "pixel spacing"),
    ],
)
def test_check_rejects_unsuitable_series(volume_options: dict[str, object], reason: str) -> None:
    volume = _small(**volume_options)
    with pytest.raises(InputRejected, match=reason):
        check_input(CtLungsPlugin(), volume)


def test_check_rejects_non_axial_series() -> None:
    volume = _small(n_slices=30)
    coronal = volume.affine.copy()
    coronal[:3, 1], coronal[:3, 2] = volume.affine[:3, 2].copy(), volume.affine[:3, 1].copy()
    with pytest.raises(InputRejected, match="not an axial series"):
        check_input(CtLungsPlugin(), dataclasses.replace(volume, affine=coronal))
    tilted = volume.affine.copy()
    angle = np.radians(25)
    tilted[1, 2], tilted[2, 2] = -np.sin(angle) * 3.0, np.cos(angle) * 3.0
    with pytest.raises(InputRejected, match="degrees oblique"):
        check_input(CtLungsPlugin(), dataclasses.replace(volume, affine=tilted))


def test_run_rejects_a_chest_without_lungs() -> None:
    volume = _small(n_slices=30, include_lungs=False)
    with pytest.raises(InputRejected, match="no lungs found: no air inside the body"):
        _run(volume)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(standard: Case) -> None:
    volume, truth, cpu_prediction = standard
    cuda = RunContext(job_id=2, rule="test", device=torch.device("cuda"))
    prediction = _run(volume, cuda)
    agreement = np.mean(prediction.label_map == cpu_prediction.label_map)
    assert agreement > 0.9999
    right = prediction.measurements[RIGHT_LUNG]["volume_cm3"]
    assert right == pytest.approx(truth.right_lung_cm3, rel=0.03)
