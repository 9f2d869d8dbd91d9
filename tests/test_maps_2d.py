"""Explainability maps and image-to-image results on 2D images: DX, CR, MG, OP.

Each source kind (single-frame DX MONOCHROME2, CR MONOCHROME1, an MG, the four-view MG
screening series, an RGB OP photograph and a three-frame RGB OP) gets a Parametric Map,
a heat-map SC, a derived series and a derived SC from test routines (a column ramp as
the attribution, a simple filter as the derived image). Every object passes dciodvfy,
references its source image (and frame), and carries the values back.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import highdicom as hd
import numpy as np
import pydicom
import pytest

from node.contract.assemble import assemble_volume
from node.contract.kinds import ResultKind
from node.contract.plugin import (
    Accepts,
    Attribution,
    DerivedImage,
    InferencePlugin,
    Prediction,
    RunContext,
)
from node.contract.volume import Volume
from node.results import build_results, load_template_by_name
from node.results.build import SERIES_NUMBERS
from tests.support.validators import dciodvfy_errors
from tools.net import wait_until
from tools.orthanc_rest import (
    find_series,
    instance_dataset,
    lookup_study,
    send_to_modality,
    upload_many,
)
from tools.synthetic.chest_xray import make_chest_xray
from tools.synthetic.fundus import make_fundus
from tools.synthetic.mammogram import make_mammogram, make_screening_series
from tools.synthetic.projection import op_image

SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PM_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


def _sources() -> dict[str, list[pydicom.Dataset]]:
    rng = np.random.default_rng(5)
    eye = rng.integers(0, 256, size=(48, 64, 3)).astype(np.uint8)
    return {
        "dx": [make_chest_xray(96, 96, seed=1)[0]],
        "cr_monochrome1": [
            make_chest_xray(96, 96, seed=2, modality="CR", photometric="MONOCHROME1")[0]
        ],
        "mg": [make_mammogram(1, rows=96, columns=80)[0]],
        "mg_screening": [ds for ds, _ in make_screening_series(2)],
        "op_rgb": [make_fundus(1, size=64)[0]],
        "op_frames": [op_image(np.stack([eye, eye[::-1], eye[:, ::-1]]), laterality="L")],
    }


SOURCES = _sources()


@pytest.fixture(scope="module", params=sorted(SOURCES))
def source(request) -> tuple[str, Volume]:
    return request.param, assemble_volume(SOURCES[request.param])


def ramp(volume: Volume) -> Attribution:
    """0 at the left edge rising to 1 at the right, different in every frame."""
    shape = volume.shape
    values = np.broadcast_to(np.linspace(0.0, 1.0, shape[2]), shape) * (
        1.0 + 0.1 * np.arange(shape[0])[:, None, None]
    )
    return Attribution(values.astype(np.float32), method="Grad-CAM", target="Mass")


def filtered(volume: Volume) -> DerivedImage:
    """Colour sources: the colour channels swapped; grayscale: half the value plus 3."""
    if volume.samples_per_pixel == 3:
        return DerivedImage(volume.array[..., ::-1].copy(), "Test channel swap")
    return DerivedImage((volume.array * 0.5 + 3.0).astype(np.float32), "Test filter")


def save(dataset: pydicom.Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def frame_reference(item: pydicom.Dataset) -> tuple[str, int | None]:
    number = item.get("ReferencedFrameNumber")
    return str(item.ReferencedSOPInstanceUID), None if number is None else int(number)


def expected_references(volume: Volume) -> list[tuple[str, int | None]]:
    return [(frame.sop_instance_uid, frame.frame_number) for frame in volume.frames]


def expected_laterality(source: pydicom.Dataset) -> str | None:
    side = str(source.get("ImageLaterality") or source.get("Laterality") or "")
    return side if side in ("L", "R") else None


def test_parametric_maps_reference_each_frame_and_read_back(source, tmp_path) -> None:
    name, volume = source
    attribution = ramp(volume)
    template = load_template_by_name("ct_organs")
    results = build_results(volume, Prediction(attribution=attribution), template, tags=["pmap"])
    maps = results.objects["pmap"]
    assert len(maps) == volume.shape[0]  # one single-frame map per image or frame
    references = []
    for index, dataset in enumerate(maps):
        path = save(dataset, tmp_path / f"pmap_{index}.dcm")
        assert dciodvfy_errors(path) == [], name
        read = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
        assert read.SOPClassUID == PM_STORAGE
        assert read.SeriesNumber == SERIES_NUMBERS[ResultKind.PMAP]
        assert (read.Rows, read.Columns) == volume.shape[1:]
        # A Frame of Reference of its own: no claim of a relation to other objects.
        assert read.FrameOfReferenceUID != volume.frame_of_reference_uid
        (frame_item,) = read.PerFrameFunctionalGroupsSequence
        (derivation,) = frame_item.DerivationImageSequence
        (reference,) = derivation.SourceImageSequence
        references.append(frame_reference(reference))
        mapping = read.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        slope = float(mapping.RealWorldValueSlope)
        real = read.pixel_array.astype(np.float64) * slope + float(mapping.RealWorldValueIntercept)
        np.testing.assert_allclose(real, attribution.values[index], atol=slope / 2 + 1e-6)
        assert read.get("Laterality") == expected_laterality(volume.datasets[index]) or (
            expected_laterality(volume.datasets[index]) is None
        )
    # highdicom names frame 1 of a single-frame instance of a multi-frame IOD (OP).
    assert [(uid, n or 1) for uid, n in references] == [
        (uid, n or 1) for uid, n in expected_references(volume)
    ]


def test_heatmap_sc_blends_over_each_frame_and_is_not_for_diagnosis(source, tmp_path) -> None:
    name, volume = source
    template = load_template_by_name("ct_organs")
    results = build_results(
        volume, Prediction(attribution=ramp(volume)), template, tags=["heatmap_sc"]
    )
    images = results.objects["heatmap_sc"]
    references = [frame_reference(im.SourceImageSequence[0]) for im in images]
    assert references == expected_references(volume)  # every frame reaches half the peak
    for index, image in enumerate(images):
        path = save(image, tmp_path / f"heat_{index}.dcm")
        assert dciodvfy_errors(path) == [], name
        assert image.SOPClassUID == SC_IMAGE_STORAGE
        assert image.BurnedInAnnotation == "YES"
        assert "not for diagnostic use" in image.ImageComments.lower()
        assert "NOT FOR DIAGNOSTIC USE" in image.DerivationDescription
        assert "NOT FOR DIAGNOSTIC USE" in image.SeriesDescription
        side = expected_laterality(volume.datasets[index])
        if side:
            assert image.Laterality == side
        pixels = image.pixel_array.astype(int)
        assert pixels.shape == (*volume.shape[1:], 3)
        # Right edge: full attribution, coloured; left edge: the source shows through.
        right = pixels[15:-15, -1]
        assert np.abs(right[:, 0] - right[:, 2]).mean() > 60
        left = pixels[15:-15, 0]
        if volume.samples_per_pixel == 3:
            source_left = np.rint(volume.array[index][15:-15, 0])
            np.testing.assert_allclose(left, source_left, atol=1)
        else:
            assert np.all(left[:, 0] == left[:, 1]) and np.all(left[:, 1] == left[:, 2])


def test_derived_series_keeps_the_iod_and_the_values(source, tmp_path) -> None:
    name, volume = source
    derived = filtered(volume)
    template = load_template_by_name("ct_denoise")
    results = build_results(volume, Prediction(derived_image=derived), template, tags=["derived"])
    images = results.objects["derived"]
    instances = list(dict.fromkeys(volume.sop_instance_uids))
    assert len(images) == len(instances)  # one per source instance, frames kept together
    series_uids = {im.SeriesInstanceUID for im in images}
    assert len(series_uids) == 1 and volume.series_instance_uid not in series_uids
    read_back = []
    for index, image in enumerate(images):
        path = save(image, tmp_path / f"derived_{index}.dcm")
        assert dciodvfy_errors(path) == [], name
        read = pydicom.dcmread(path)
        source_uid = read.SourceImageSequence[0].ReferencedSOPInstanceUID
        assert source_uid == instances[index]
        source_ds = volume.datasets[volume.sop_instance_uids.index(source_uid)]
        assert read.SOPClassUID == source_ds.SOPClassUID
        assert read.ImageType[0] == "DERIVED"
        assert read.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == ("121322")
        assert read.get("ImageLaterality") == source_ds.get("ImageLaterality")
        assert read.get("Laterality") == source_ds.get("Laterality")
        assert read.PhotometricInterpretation == source_ds.PhotometricInterpretation
        if name.startswith("op"):
            assert list(read.ImageType) == ["DERIVED", "PRIMARY", "PROCESSED"]
            assert read.BitsAllocated == 8
        else:
            assert list(read.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        read_back.append(read)
    # Read the derived series as the node would: it gives the derived values back.
    again = assemble_volume(read_back)
    np.testing.assert_allclose(again.array, derived.values, atol=0.5 + 1e-6)


def test_derived_sc_references_each_frame_and_keeps_the_values(source, tmp_path) -> None:
    name, volume = source
    derived = filtered(volume)
    template = load_template_by_name("ct_denoise")
    results = build_results(
        volume, Prediction(derived_image=derived), template, tags=["derived_sc"]
    )
    images = results.objects["derived_sc"]
    assert [frame_reference(im.SourceImageSequence[0]) for im in images] == (
        expected_references(volume)
    )
    for index, image in enumerate(images):
        path = save(image, tmp_path / f"derived_sc_{index}.dcm")
        assert dciodvfy_errors(path) == [], name
        read = pydicom.dcmread(path)
        assert read.SOPClassUID == SC_IMAGE_STORAGE
        side = expected_laterality(volume.datasets[index])
        if side:
            assert read.Laterality == side
        if volume.samples_per_pixel == 3:
            np.testing.assert_array_equal(read.pixel_array, derived.values[index])
        else:
            real = read.pixel_array * float(read.RescaleSlope) + float(read.RescaleIntercept)
            np.testing.assert_allclose(real, derived.values[index], atol=0.5 + 1e-6)


def test_an_rgb_derived_image_needs_a_colour_source() -> None:
    volume = assemble_volume(SOURCES["dx"])
    rgb = DerivedImage(np.zeros((*volume.shape, 3), np.float32), "colour")
    with pytest.raises(Exception, match="differs from the source volume"):
        build_results(
            volume, Prediction(derived_image=rgb), load_template_by_name("ct_denoise"),
            tags=["derived"],
        )  # fmt: skip
    with pytest.raises(ValueError, match="3-D"):
        DerivedImage(np.zeros((2, 4, 4, 2), np.float32), "two samples")


TEMPLATE = """\
format_version: 3
name: map_probe_2d
description: Column-ramp attribution of 2D images (test routine, not a clinical model).
algorithm:
  name: ainode-test-2d-map
  version: "0.1.0"
  family: {value: "123110", scheme: DCM, meaning: Artificial Intelligence}
  manufacturer: ainode
  device_uid: "2.25.31841977360442189126101383360818413722"
output:
  series_description: AI 2D map probe
  content_label: PROBE
"""


class MapProbe(InferencePlugin):
    """Test routine: a column-ramp attribution and a filtered copy of any MG image."""

    name = "map_probe_2d"
    version = "0.1.0"
    template = "map_probe_2d"
    accepts = Accepts(
        modalities=("MG",),
        sop_classes=("DigitalMammographyXRayImageStorageForPresentation",),
        lateralities=("L", "R"),
    )
    runs: ClassVar[int] = 0

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        MapProbe.runs += 1
        return Prediction(attribution=ramp(volume), derived_image=filtered(volume))


@pytest.mark.slow
def test_2d_maps_arrive_in_orthanc(tmp_path: Path) -> None:
    """An MG screening series goes from Orthanc to the node; its maps come back valid."""
    from tests.support.pacs import orthanc_and_node
    from tools.synthetic.chest_ct import write_series

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "map_probe_2d.yaml").write_text(TEMPLATE)
    profile = ["pmap", "heatmap_sc", "derived", "derived_sc"]
    rule = {"name": "map2d", "match": {"Modality": "MG"}, "plugin": "map_probe_2d"}
    datasets = [ds for ds, _ in make_screening_series(3)]
    wanted = {SERIES_NUMBERS[ResultKind(kind)]: kind for kind in profile}
    with orthanc_and_node(
        tmp_path, [rule], plugins=[MapProbe], templates_dir=templates, results=profile
    ) as (pacs, _node):
        files = write_series(datasets, tmp_path / "series")
        upload_many(pacs.client, files)
        study_uid = str(datasets[0].StudyInstanceUID)
        send_to_modality(pacs.client, "ainode", [lookup_study(pacs.client, study_uid)])

        def arrived() -> dict[str, dict] | None:
            found = {}
            for series in find_series(pacs.client, study_uid):
                number = int(series["MainDicomTags"].get("SeriesNumber", 0))
                if number in wanted and series.get("IsStable"):
                    found[wanted[number]] = series
            complete = set(found) == set(profile) and all(
                len(s["Instances"]) == len(datasets) for s in found.values()
            )
            return found if complete else None

        series = wait_until(arrived, 300, message="every 2D result series")
        objects = {
            kind: [instance_dataset(pacs.client, i) for i in series[kind]["Instances"]]
            for kind in profile
        }
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for kind, received in objects.items():
        for index, dataset in enumerate(received):
            path = save(dataset, tmp_path / f"{kind}_{index}.dcm")
            assert dciodvfy_errors(path) == [], kind
    for pmap in objects["pmap"]:
        item = pmap.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        source = by_uid[str(item.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert pmap.Laterality == source.ImageLaterality
    for kind in ("heatmap_sc", "derived", "derived_sc"):
        referenced = {
            str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in objects[kind]
        }
        assert referenced == set(by_uid), kind
    assert all(ds.BurnedInAnnotation == "YES" for ds in objects["heatmap_sc"])
