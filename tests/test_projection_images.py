"""2D DICOM writers (DX, CR, MG, OP), validated with dciodvfy; routing and Accepts on 2D input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.synthetic.projection import (
    SeriesIdentity,
    cr_image,
    dx_image,
    mg_image,
    op_image,
)
from tests.support.validators import dciodvfy_errors

RNG = np.random.default_rng(7)
GRAY = RNG.integers(0, 4096, size=(64, 48)).astype(np.uint16)
RGB = RNG.integers(0, 256, size=(40, 52, 3)).astype(np.uint8)


def _written(ds: Dataset, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


WRITERS = {
    "dx_presentation": lambda: dx_image(GRAY, imager_pixel_spacing_mm=0.2),
    "dx_processing_monochrome1": lambda: dx_image(
        GRAY,
        imager_pixel_spacing_mm=(0.2, 0.25),
        intent="FOR PROCESSING",
        photometric="MONOCHROME1",
    ),
    "dx_lateral": lambda: dx_image(GRAY, imager_pixel_spacing_mm=0.2, view_position="LL"),
    "cr": lambda: cr_image(GRAY, pixel_spacing_mm=0.15),
    "mg_presentation_l_cc": lambda: mg_image(
        GRAY, laterality="L", view="CC", imager_pixel_spacing_mm=0.1
    ),
    "mg_presentation_r_mlo": lambda: mg_image(
        GRAY, laterality="R", view="MLO", imager_pixel_spacing_mm=0.1
    ),
    "mg_processing_l_mlo": lambda: mg_image(
        GRAY, laterality="L", view="MLO", imager_pixel_spacing_mm=0.1, intent="FOR PROCESSING"
    ),
    "op_rgb": lambda: op_image(RGB, laterality="R", pixel_spacing_mm=0.012),
    "op_monochrome": lambda: op_image(RGB[..., 1], laterality="L"),
    "op_multiframe_rgb": lambda: op_image(np.stack([RGB, RGB[::-1], RGB[:, ::-1]]), laterality="L"),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_writer_passes_dciodvfy(kind, tmp_path):
    path = _written(WRITERS[kind](), tmp_path, kind)
    assert dciodvfy_errors(path) == []


def test_pixels_round_trip_through_the_file(tmp_path):
    ds = pydicom.dcmread(_written(WRITERS["mg_presentation_l_cc"](), tmp_path, "mg"))
    assert np.array_equal(ds.pixel_array, GRAY)
    op = pydicom.dcmread(_written(WRITERS["op_multiframe_rgb"](), tmp_path, "op"))
    assert op.pixel_array.shape == (3, 40, 52, 3)
    assert np.array_equal(op.pixel_array[1], RGB[::-1])


def test_mammogram_carries_laterality_view_code_and_intent():
    ds = mg_image(GRAY, laterality="L", view="MLO", imager_pixel_spacing_mm=0.085)
    assert ds.SOPClassUID == pydicom.uid.DigitalMammographyXRayImageStorageForPresentation
    assert (ds.ImageLaterality, ds.ViewPosition, ds.BodyPartExamined) == ("L", "MLO", "BREAST")
    assert ds.ViewCodeSequence[0].CodeValue == "399368009"
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.085, 0.085]
    processing = mg_image(
        GRAY, laterality="R", view="CC", imager_pixel_spacing_mm=0.1, intent="FOR PROCESSING"
    )
    assert processing.SOPClassUID == pydicom.uid.DigitalMammographyXRayImageStorageForProcessing
    assert processing.ViewCodeSequence[0].CodeValue == "399162004"
    assert "WindowCenter" not in processing


def test_images_of_one_series_share_its_identity():
    identity = SeriesIdentity(patient_name="SYNTHETIC^MAMMO", patient_id="SYNMG1")
    cc = mg_image(GRAY, laterality="L", view="CC", imager_pixel_spacing_mm=0.1, identity=identity)
    mlo = mg_image(
        GRAY,
        laterality="L",
        view="MLO",
        imager_pixel_spacing_mm=0.1,
        identity=identity,
        instance_number=2,
    )
    assert cc.SeriesInstanceUID == mlo.SeriesInstanceUID == identity.series_instance_uid
    assert cc.SOPInstanceUID != mlo.SOPInstanceUID
    assert str(cc.PatientName) == "SYNTHETIC^MAMMO"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: dx_image(GRAY.astype(float), imager_pixel_spacing_mm=0.2), "integers"),
        (lambda: dx_image(GRAY[None], imager_pixel_spacing_mm=0.2), "2D"),
        (lambda: dx_image(GRAY, imager_pixel_spacing_mm=0.2, bits_stored=10), "10 unsigned"),
        (lambda: dx_image(GRAY, imager_pixel_spacing_mm=-1), "positive"),
        (lambda: dx_image(GRAY, imager_pixel_spacing_mm=0.2, view_position="XX"), "view"),
        (
            lambda: mg_image(GRAY, laterality="B", view="CC", imager_pixel_spacing_mm=0.1),  # type: ignore[arg-type]
            "laterality",
        ),
        (lambda: mg_image(GRAY, laterality="L", view="AP", imager_pixel_spacing_mm=0.1), "view"),
        (lambda: op_image(RGB.astype(np.uint16), laterality="L"), "uint8"),
        (lambda: op_image(RGB[None, None], laterality="L"), "shape"),
    ],
)
def test_bad_input_is_refused_with_a_reason(make, message):
    with pytest.raises(ValueError, match=message):
        make()
