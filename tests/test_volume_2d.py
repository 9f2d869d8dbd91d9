"""2D images as volumes of frames: DX/CR/MG single-frame series, OP RGB, multi-frame images."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.pixels import convert_color_space

from node.contract.assemble import assemble_volume, load_volume
from node.contract.volume import FrameSource
from node.errors import VolumeError
from tools.synthetic.chest_ct import make_chest_ct
from tools.synthetic.projection import SeriesIdentity, cr_image, dx_image, mg_image, op_image

RNG = np.random.default_rng(3)
GRAY = RNG.integers(0, 4096, size=(40, 30)).astype(np.uint16)
RGB = RNG.integers(0, 256, size=(20, 24, 3)).astype(np.uint8)


def test_a_dx_image_is_one_frame_with_detector_spacing():
    ds = dx_image(GRAY, imager_pixel_spacing_mm=(0.2, 0.25), view_position="AP")
    volume = assemble_volume([ds])
    assert volume.is_2d and volume.layout == "images"
    assert volume.shape == (1, 40, 30)
    assert volume.array.dtype == np.float32
    assert np.array_equal(volume.array[0], GRAY.astype(np.float32))
    assert volume.spacing == pytest.approx((1.0, 0.2, 0.25))
    assert volume.pixel_spacing_attribute == "ImagerPixelSpacing"
    assert volume.affine @ np.array([2, 4, 0, 1.0]) == pytest.approx([0.5, 0.8, 0, 1])
    assert volume.frames == (FrameSource(str(ds.SOPClassUID), str(ds.SOPInstanceUID), None),)
    assert volume.views == ("AP",)
    assert volume.lateralities == ("U",)
    assert volume.samples_per_pixel == 1
    assert not volume.inverted
    assert "PixelData" not in volume.datasets[0]


def test_monochrome1_is_inverted_so_higher_is_brighter():
    ds = dx_image(GRAY, imager_pixel_spacing_mm=0.2, photometric="MONOCHROME1", bits_stored=12)
    volume = assemble_volume([ds])
    assert volume.inverted
    assert volume.photometric_interpretation == "MONOCHROME1"
    assert np.array_equal(volume.array[0], (4095 - GRAY).astype(np.float32))


def test_monochrome1_inversion_follows_the_rescale():
    ds = cr_image(GRAY, pixel_spacing_mm=0.15, photometric="MONOCHROME1", bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    volume = assemble_volume([ds])
    # Range after rescale is [-100, 8090]; v -> -100 + 8090 - v.
    expected = (-100 + 8090) - (GRAY.astype(np.float32) * 2 - 100)
    assert np.array_equal(volume.array[0], expected)
    assert volume.pixel_spacing_attribute == "PixelSpacing"
    assert volume.spacing[1:] == pytest.approx((0.15, 0.15))


def test_a_mammography_series_keeps_each_image_laterality_and_view():
    identity = SeriesIdentity(patient_name="SYNTHETIC^MG")
    cc = mg_image(GRAY, laterality="L", view="CC", imager_pixel_spacing_mm=0.1, identity=identity)
    mlo = mg_image(
        GRAY[::-1],
        laterality="L",
        view="MLO",
        imager_pixel_spacing_mm=0.1,
        identity=identity,
        instance_number=2,
    )
    volume = assemble_volume([mlo, cc])  # arrival order is not image order
    assert volume.shape == (2, 40, 30)
    assert volume.lateralities == ("L", "L")
    assert volume.views == ("CC", "MLO")
    assert volume.sop_instance_uids == (cc.SOPInstanceUID, mlo.SOPInstanceUID)
    assert set(volume.sop_class_uids) == {
        pydicom.uid.DigitalMammographyXRayImageStorageForPresentation
    }
    assert np.array_equal(volume.array[1], GRAY[::-1].astype(np.float32))


def test_view_comes_from_the_view_code_when_view_position_is_absent():
    ds = mg_image(GRAY, laterality="R", view="MLO", imager_pixel_spacing_mm=0.1)
    del ds.ViewPosition
    assert assemble_volume([ds]).views == ("MLO",)


def test_an_rgb_photograph_keeps_its_colour_on_a_last_axis():
    ds = op_image(RGB, laterality="R", pixel_spacing_mm=0.01)
    volume = assemble_volume([ds])
    assert volume.array.shape == (1, 20, 24, 3)
    assert volume.shape == (1, 20, 24)
    assert volume.samples_per_pixel == 3
    assert volume.photometric_interpretation == "RGB"
    assert np.array_equal(volume.array[0], RGB.astype(np.float32))
    assert volume.lateralities == ("R",)
    assert volume.spacing[1:] == pytest.approx((0.01, 0.01))


def test_ybr_photographs_are_read_as_rgb():
    ds = op_image(RGB, laterality="L")
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.PixelData = convert_color_space(RGB, "RGB", "YBR_FULL").tobytes()
    volume = assemble_volume([ds])
    assert np.abs(volume.array[0] - RGB.astype(np.float32)).max() <= 2


def test_photograph_without_spacing_has_a_nominal_one_and_says_so():
    volume = assemble_volume([op_image(RGB, laterality="L")])
    assert volume.pixel_spacing_attribute == ""
    assert volume.spacing == (1.0, 1.0, 1.0)


def test_a_multi_frame_image_gives_one_frame_each_with_its_number(tmp_path):
    frames = np.stack([RGB, RGB[::-1], RGB[:, ::-1]])
    ds = op_image(frames, laterality="L")
    path = tmp_path / "op.dcm"
    ds.save_as(path, enforce_file_format=True)
    volume = load_volume([path])
    assert volume.array.shape == (3, 20, 24, 3)
    assert np.array_equal(volume.array[2], RGB[:, ::-1].astype(np.float32))
    assert [f.frame_number for f in volume.frames] == [1, 2, 3]
    assert {f.sop_instance_uid for f in volume.frames} == {str(ds.SOPInstanceUID)}
    assert volume.datasets[0] is volume.datasets[2]
    assert volume.lateralities == ("L", "L", "L")


def test_frame_laterality_of_enhanced_images_is_read_per_frame():
    ds = op_image(np.stack([RGB, RGB]), laterality="L")
    del ds.ImageLaterality
    groups = []
    for side in ("L", "R"):
        anatomy = pydicom.Dataset()
        anatomy.FrameLaterality = side
        group = pydicom.Dataset()
        group.FrameAnatomySequence = [anatomy]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = groups
    assert assemble_volume([ds]).lateralities == ("L", "R")


@pytest.mark.parametrize(
    ("series", "message"),
    [
        (
            lambda: [
                dx_image(GRAY, imager_pixel_spacing_mm=0.2),
                dx_image(GRAY[:20], imager_pixel_spacing_mm=0.2, instance_number=2),
            ],
            "mixes image sizes",
        ),
        (
            lambda: [
                dx_image(GRAY, imager_pixel_spacing_mm=0.2),
                dx_image(GRAY, imager_pixel_spacing_mm=0.3, instance_number=2),
            ],
            "mixes pixel spacings: 0.2x0.2 mm, 0.3x0.3 mm",
        ),
        (
            lambda: [op_image(RGB, laterality="L"), op_image(RGB[..., 0], laterality="L")],
            "mixes image sizes or colour",
        ),
        (
            lambda: [dx_image(GRAY, imager_pixel_spacing_mm=0.2), make_chest_ct(n_slices=2)[0][0]],
            "mixes 2D image SOP classes with cross-sectional ones",
        ),
    ],
)
def test_series_that_cannot_be_one_array_are_refused(series, message):
    with pytest.raises(VolumeError, match=message):
        assemble_volume(series())


def test_undecodable_pixels_are_named():
    ds = dx_image(GRAY, imager_pixel_spacing_mm=0.2)
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(VolumeError, match=f"instance {ds.SOPInstanceUID}: cannot decode"):
        assemble_volume([ds])


def test_cross_sectional_series_are_unchanged():
    datasets, _ = make_chest_ct(n_slices=6, rows=32, columns=32, seed=1)
    volume = assemble_volume(copy.deepcopy(datasets))
    assert volume.layout == "volume" and not volume.is_2d
    assert volume.shape == (6, 32, 32)
    assert volume.frame_numbers == ()
    assert all(f.frame_number is None for f in volume.frames)
    assert volume.samples_per_pixel == 1


def test_frame_order_does_not_depend_on_arrival_when_instance_numbers_tie():
    images = [
        dx_image(GRAY, imager_pixel_spacing_mm=0.2, sop_instance_uid=f"2.25.{n}") for n in (9, 3, 5)
    ]
    forward = assemble_volume(images).sop_instance_uids
    assert (
        forward
        == assemble_volume(images[::-1]).sop_instance_uids
        == (
            "2.25.3",
            "2.25.5",
            "2.25.9",
        )
    )
