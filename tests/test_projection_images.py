"""2D DICOM writers (DX, CR, MG, OP), validated with dciodvfy; routing and Accepts on 2D input."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from node.config import RuleSettings
from node.contract.assemble import assemble_volume
from node.contract.image_attributes import sop_class_uid
from node.contract.plugin import Accepts
from node.contract.volume import Volume
from node.errors import InputRejected
from node.routing import HeaderSubject, parse_conditions
from tests.support.validators import dciodvfy_errors
from tools.synthetic.chest_ct import make_chest_ct
from tools.synthetic.chest_xray import CARDIOMEGALY_RATIO, make_chest_xray
from tools.synthetic.projection import (
    SeriesIdentity,
    cr_image,
    dx_image,
    mg_image,
    op_image,
)

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


# -- routing on SOP class, laterality and view -------------------------------------------


def _mammogram_subject(**kwargs) -> HeaderSubject:
    options = {"laterality": "L", "view": "CC", "imager_pixel_spacing_mm": 0.1, **kwargs}
    return HeaderSubject(mg_image(GRAY, **options), calling_ae="MG_UNIT", called_ae="AINODE")


def _holds(match, subject) -> bool:
    return all(c.matches(subject) for c in parse_conditions(match))


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"SOPClassUID": "DigitalMammographyXRayImageStorageForPresentation"}, True),
        ({"SOPClassUID": "DigitalMammographyXRayImageStorageForProcessing"}, False),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2"}, True),
        (
            {
                "SOPClassUID": [
                    "DigitalMammographyXRayImageStorageForProcessing",
                    "DigitalMammographyXRayImageStorageForPresentation",
                ]
            },
            True,
        ),
        ({"SOPClassUID": {"in": ["OphthalmicPhotography8BitImageStorage"]}}, False),
        ({"SOPClassUID": {"not": "DigitalXRayImageStorageForPresentation"}}, True),
        ({"SOPClassUID": {"regex": r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\.1\.2"}}, True),
        ({"ImageLaterality": "L"}, True),
        ({"ImageLaterality": "R"}, False),
        ({"ViewPosition": {"in": ["CC", "MLO"]}}, True),
        ({"ViewPosition": "MLO"}, False),
        ({"Modality": "MG", "ImageLaterality": "L", "ViewPosition": "CC"}, True),
    ],
)
def test_rules_match_sop_class_keywords_laterality_and_view(match, expected):
    assert _holds(match, _mammogram_subject()) is expected


def test_rules_match_the_eye_of_a_photograph():
    subject = HeaderSubject(op_image(RGB, laterality="R"))
    assert _holds({"SOPClassUID": "OphthalmicPhotography8BitImageStorage"}, subject)
    assert _holds({"ImageLaterality": "R"}, subject)
    assert not _holds({"ImageLaterality": "L"}, subject)


def test_a_misspelt_sop_class_is_refused_with_its_path():
    with pytest.raises(ValueError, match=r"match.SOPClassUID.in: 'DigitalMamogram'"):
        parse_conditions({"SOPClassUID": {"in": ["DigitalMamogram"]}})
    with pytest.raises(ValidationError, match="is neither a SOP class keyword nor a UID"):
        RuleSettings(
            name="mg", plugin="p", match={"SOPClassUID": "Mammogram"}, destinations=["pacs"]
        )


# -- Accepts on 2D input ------------------------------------------------------------------

MG_ACCEPTS = Accepts(
    modalities=("MG",),
    body_parts=("BREAST",),
    sop_classes=("DigitalMammographyXRayImageStorageForPresentation",),
    photometric_interpretations=("MONOCHROME2",),
    samples_per_pixel=(1,),
    bits_stored=(12,),
    lateralities=("L", "R"),
    views=("CC", "MLO"),
    pixel_spacing_mm=(0.05, 0.2),
    min_matrix=16,
)


def _mammograms(**overrides) -> Volume:
    identity = SeriesIdentity(patient_name="SYNTHETIC^ACCEPTS")
    images = []
    for number, view in enumerate(("CC", "MLO"), start=1):
        options = {
            "laterality": "L",
            "view": view,
            "imager_pixel_spacing_mm": 0.1,
            "identity": identity,
            "instance_number": number,
            **overrides,
        }
        images.append(mg_image(GRAY, **options))
    return assemble_volume(images)


def test_a_mammography_routine_accepts_a_two_view_series():
    # Planes, obliquity and slice spacing (CT defaults) do not apply to projections.
    assert MG_ACCEPTS.problems(_mammograms()) == []


@pytest.mark.parametrize(
    ("volume", "problem"),
    [
        (
            lambda: _mammograms(intent="FOR PROCESSING"),
            "SOP class DigitalMammographyXRayImageStorageForProcessing is not "
            "DigitalMammographyXRayImageStorageForPresentation",
        ),
        (lambda: _mammograms(view="ML"), "frames 0, 1: view ML is not CC/MLO"),
        (lambda: _mammograms(photometric="MONOCHROME1"), "MONOCHROME1 is not MONOCHROME2"),
        (lambda: _mammograms(bits_stored=14), "14 bits stored; 12 accepted"),
        (
            lambda: _mammograms(imager_pixel_spacing_mm=0.5),
            "pixel spacing 0.5x0.5 mm (ImagerPixelSpacing) is outside 0.05-0.2 mm",
        ),
        (
            lambda: assemble_volume([op_image(RGB, laterality="L")]),
            "3 samples per pixel; 1 accepted",
        ),
        (
            lambda: assemble_volume([op_image(RGB, laterality="L")]),
            "pixel spacing is not given",
        ),
    ],
)
def test_two_d_declarations_name_what_is_wrong(volume, problem):
    problems = MG_ACCEPTS.problems(volume())
    assert any(problem in p for p in problems), problems


def test_missing_laterality_is_reported_per_frame():
    volume = _mammograms()
    header = copy.deepcopy(volume.datasets[1])
    del header.ImageLaterality
    changed = dataclasses.replace(volume, datasets=(volume.datasets[0], header))
    assert MG_ACCEPTS.problems(changed) == ["frame 1: laterality not given is not L/R"]


def test_a_fundus_routine_accepts_an_rgb_photograph():
    accepts = Accepts(
        modalities=("OP",),
        sop_classes=("OphthalmicPhotography8BitImageStorage",),
        photometric_interpretations=("RGB", "YBR_FULL_422"),
        samples_per_pixel=(3,),
        lateralities=("L", "R"),
        bits_stored=(8,),
    )
    assert accepts.problems(assemble_volume([op_image(RGB, laterality="R")])) == []
    with pytest.raises(InputRejected, match="modality DX is not OP"):
        accepts.check(assemble_volume([dx_image(GRAY, imager_pixel_spacing_mm=0.2)]))


def test_a_ct_routine_refuses_a_radiograph_by_modality_only():
    problems = Accepts().problems(assemble_volume([dx_image(GRAY, imager_pixel_spacing_mm=0.2)]))
    assert problems == ["modality DX is not CT"]


def test_a_misspelt_sop_class_in_accepts_is_refused():
    with pytest.raises(ValueError, match="'MammogramStorage' is neither"):
        Accepts(sop_classes=("MammogramStorage",))


def test_ct_checks_are_unchanged():
    datasets, _ = make_chest_ct(n_slices=6, rows=32, columns=32, seed=2)
    volume = assemble_volume(datasets)
    assert Accepts().problems(volume) == []
    assert Accepts(planes=("coronal",)).problems(volume) == [
        "not an coronal series: slices are axial"
    ]
    assert Accepts(sop_classes=("CTImageStorage",)).problems(volume) == []


# -- synthetic chest radiographs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("modality", "photometric"), [("DX", "MONOCHROME2"), ("CR", "MONOCHROME1")]
)
def test_chest_radiograph_passes_dciodvfy(modality, photometric, tmp_path):
    ds, _ = make_chest_xray(128, 112, nodules=1, modality=modality, photometric=photometric)
    assert ds.Modality == modality and ds.PhotometricInterpretation == photometric
    assert dciodvfy_errors(_written(ds, tmp_path, modality)) == []


def test_chest_radiograph_truth_matches_the_pixels():
    ds, truth = make_chest_xray(nodules=2, seed=4)
    pixels = ds.pixel_array.astype(float)
    lungs = truth.left_lung | truth.right_lung
    assert truth.has_nodule and len(truth.nodules) == 2
    lung_level = np.median(pixels[lungs])
    assert np.median(pixels[truth.heart]) > lung_level + 800
    for nodule in truth.nodules:
        x, y = nodule.center
        assert lungs[int(y), int(x)]
        assert pixels[int(y), int(x)] > lung_level + 500
        x0, y0, x1, y1 = nodule.box
        assert (x1 - x0, y1 - y0) == pytest.approx((2 * nodule.radius_px,) * 2)
    # The patient's right lung is on the image left in a PA view.
    assert np.argwhere(truth.right_lung)[:, 1].mean() < np.argwhere(truth.left_lung)[:, 1].mean()


def test_cardiomegaly_shows_in_the_cardiothoracic_ratio():
    normal = [make_chest_xray(seed=s)[1] for s in range(3)]
    enlarged = [make_chest_xray(seed=s, cardiomegaly=True)[1] for s in range(3)]
    assert all(0.3 < t.cardiothoracic_ratio < CARDIOMEGALY_RATIO for t in normal)
    assert all(CARDIOMEGALY_RATIO < t.cardiothoracic_ratio < 0.7 for t in enlarged)
    assert not any(t.cardiomegaly for t in normal) and all(t.cardiomegaly for t in enlarged)


def test_chest_radiograph_is_deterministic_and_monochrome1_reads_back_the_same():
    a, _ = make_chest_xray(seed=5, nodules=1)
    b, _ = make_chest_xray(seed=5, nodules=1)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.PixelData == b.PixelData
    inverted, _ = make_chest_xray(seed=5, nodules=1, photometric="MONOCHROME1")
    assert np.array_equal(assemble_volume([inverted]).array, assemble_volume([a]).array)


@pytest.mark.parametrize(
    ("name", "uid"),
    [
        ("OphthalmicPhotography8BitImageStorage", "1.2.840.10008.5.1.4.1.1.77.1.5.1"),
        ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"),
        ("1.2.826.0.1.3680043.9.9999.1", "1.2.826.0.1.3680043.9.9999.1"),  # private SOP class
    ],
)
def test_sop_classes_are_named_by_keyword_or_uid(name, uid):
    assert sop_class_uid(name) == uid


@pytest.mark.parametrize(
    "name", ["Mammogram", "ExplicitVRLittleEndian", "1.2.840.10008.1.2.1", "1..2", "01.2", ""]
)
def test_what_is_not_a_sop_class_is_refused(name):
    with pytest.raises(ValueError, match="neither a SOP class keyword nor a UID"):
        sop_class_uid(name)
