"""Explainability maps and image-to-image results: Parametric Map, heat-map SC, derived series.

Builders are checked on a small synthetic abdomen CT with dciodvfy (0 errors) and read
back (highdicom for the Parametric Map, pydicom for the images); the plugins
(``ct_denoise``, the Grad-CAM of ``ct_organs_explain``) run on phantoms; the slow test
runs both in the node and checks the objects that arrive in a real Orthanc.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from scipy import ndimage

from node.contract.assemble import assemble_volume
from node.contract.kinds import ResultKind, check_profile, profile_tags
from node.contract.plugin import Attribution, DerivedImage, Prediction, RunContext
from node.contract.volume import Volume
from node.results import build_results, load_template_by_name
from node.results.build import SERIES_NUMBERS
from node.results.derived.image import fitted_intercept
from node.results.plan import unavailable_tags
from tests.support.validators import dciodvfy_errors
from tools.net import wait_until
from tools.orthanc_rest import (
    find_series,
    instance_dataset,
    lookup_study,
    send_to_modality,
    upload_many,
)
from tools.synthetic.abdomen_ct import LIVER, make_abdomen_ct

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PM_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


@pytest.fixture(scope="module")
def phantom() -> tuple[Volume, np.ndarray]:
    datasets, truth = make_abdomen_ct(
        n_slices=24, rows=64, columns=64, pixel_spacing_mm=6.5, slice_thickness_mm=16.0, seed=3
    )
    return assemble_volume(datasets), truth.labels


def liver_attribution(volume: Volume, labels: np.ndarray) -> Attribution:
    """A map that is 1 in the liver and a ramp of 0-0.3 along the columns elsewhere."""
    ramp = np.broadcast_to(np.linspace(0.0, 0.3, volume.shape[2]), volume.shape)
    values = np.where(labels == LIVER, 1.0, ramp).astype(np.float32)
    return Attribution(values, method="Grad-CAM", target="Liver", label_value=3)


def save(dataset: pydicom.Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def positions(datasets: list[pydicom.Dataset] | tuple[pydicom.Dataset, ...]) -> list[list[float]]:
    return [[float(v) for v in ds.ImagePositionPatient] for ds in datasets]


def test_new_kinds_have_profiles_series_numbers_and_tags() -> None:
    kinds = check_profile(["pmap", "heatmap_sc", "derived", "derived_sc", "ko"])
    assert kinds[-1] is ResultKind.KO
    assert profile_tags(["derived", "ko"]) == {"derived", "ko.derived"}
    numbers = [SERIES_NUMBERS[ResultKind(kind)] for kind in kinds[:-1]]
    assert len(set(SERIES_NUMBERS.values())) == len(SERIES_NUMBERS)
    assert min(numbers) > 9007


def test_parametric_map_is_valid_on_the_source_grid_and_reads_back(phantom, tmp_path) -> None:
    volume, labels = phantom
    attribution = liver_attribution(volume, labels)
    template = load_template_by_name("ct_organs")
    results = build_results(volume, Prediction(attribution=attribution), template, tags=["pmap"])
    (dataset,) = results.objects["pmap"]
    path = save(dataset, tmp_path / "pmap.dcm")
    assert dciodvfy_errors(path) == []

    read = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
    assert read.SOPClassUID == PM_STORAGE
    assert read.FrameOfReferenceUID == volume.frame_of_reference_uid
    assert read.SeriesNumber == SERIES_NUMBERS[ResultKind.PMAP]
    assert "Grad-CAM of Liver" in read.ContentDescription
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in read.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == set(volume.sop_instance_uids)
    mapping = read.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope, intercept = float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)
    assert "Grad-CAM of Liver" in mapping.LUTExplanation
    frames = read.pixel_array.astype(np.float64) * slope + intercept
    assert frames.shape == volume.shape
    source_positions = positions(volume.datasets)
    for frame, item in enumerate(read.PerFrameFunctionalGroupsSequence):
        where = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        index = source_positions.index(where)  # every frame sits on a source slice
        np.testing.assert_allclose(frames[frame], attribution.values[index], atol=slope / 2 + 1e-6)
    orientation = read.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in orientation.ImageOrientationPatient], volume.orientation
    )


def test_heatmap_sc_is_valid_marked_not_diagnostic_and_coloured_where_the_map_is(
    phantom, tmp_path
) -> None:
    volume, labels = phantom
    attribution = liver_attribution(volume, labels)
    template = load_template_by_name("ct_organs")
    results = build_results(
        volume, Prediction(attribution=attribution), template, tags=["heatmap_sc"]
    )
    images = results.objects["heatmap_sc"]
    liver_slices = {i for i in range(volume.shape[0]) if (labels[i] == LIVER).any()}
    by_source = {uid: i for i, uid in enumerate(volume.sop_instance_uids)}
    shown = {by_source[im.SourceImageSequence[0].ReferencedSOPInstanceUID] for im in images}
    assert shown == liver_slices  # slices reaching half of the maximum
    for image in images[:: max(1, len(images) // 3)]:
        path = save(image, tmp_path / f"heat_{image.InstanceNumber}.dcm")
        assert dciodvfy_errors(path) == []
    image = images[len(images) // 2]
    assert image.SOPClassUID == SC_IMAGE_STORAGE
    assert image.BurnedInAnnotation == "YES"
    assert "not for diagnostic use" in image.ImageComments.lower()
    assert "NOT FOR DIAGNOSTIC USE" in image.DerivationDescription
    assert "NOT FOR DIAGNOSTIC USE" in image.SeriesDescription
    assert list(image.ImageType) == ["DERIVED", "SECONDARY"]
    pixels = image.pixel_array.astype(int)
    index = by_source[image.SourceImageSequence[0].ReferencedSOPInstanceUID]
    liver = labels[index] == LIVER
    colour = np.abs(pixels[..., 0] - pixels[..., 2]) + np.abs(pixels[..., 1] - pixels[..., 2])
    assert colour[liver].mean() > 60  # the heat map is drawn over the liver
    # Column 0 has attribution 0: grey (transparent heat map) outside the banner lines.
    grey = pixels[15:-15, 0]
    assert np.all(grey[:, 0] == grey[:, 1]) and np.all(grey[:, 1] == grey[:, 2])


def test_derived_ct_series_matches_the_source_geometry_and_references_it(phantom, tmp_path):
    volume, _ = phantom
    derived = DerivedImage(volume.array * 0.5 - 20.0, "Test filter")
    template = load_template_by_name("ct_denoise")
    results = build_results(volume, Prediction(derived_image=derived), template, tags=["derived"])
    images = results.objects["derived"]
    assert len(images) == volume.shape[0]
    for index in (0, len(images) // 2, len(images) - 1):
        path = save(images[index], tmp_path / f"derived_{index}.dcm")
        assert dciodvfy_errors(path) == []
    series_uids = {im.SeriesInstanceUID for im in images}
    assert len(series_uids) == 1 and volume.series_instance_uid not in series_uids
    assert not set(volume.sop_instance_uids) & {im.SOPInstanceUID for im in images}
    for image, source, values in zip(images, volume.datasets, derived.values, strict=True):
        read = pydicom.dcmread(save(image, tmp_path / "one.dcm"))
        assert read.SOPClassUID == CT_IMAGE_STORAGE == source.SOPClassUID
        assert list(read.ImageType)[:3] == ["DERIVED", "SECONDARY", "AXIAL"]
        assert read.ImagePositionPatient == source.ImagePositionPatient
        assert read.ImageOrientationPatient == source.ImageOrientationPatient
        assert read.PixelSpacing == source.PixelSpacing
        assert read.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert read.StudyInstanceUID == source.StudyInstanceUID
        assert read.SeriesNumber == SERIES_NUMBERS[ResultKind.DERIVED]
        (reference,) = read.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert "Test filter" in read.DerivationDescription
        assert read.DerivationCodeSequence[0].CodeValue == "110001"
        real = read.pixel_array * float(read.RescaleSlope) + float(read.RescaleIntercept)
        np.testing.assert_allclose(real, values, atol=0.5 + 1e-6)
    again = assemble_volume([pydicom.dcmread(save(im, tmp_path / f"{i}.dcm")) for i, im in
                             enumerate(images)])  # fmt: skip
    np.testing.assert_allclose(again.affine, volume.affine)


def test_derived_values_outside_the_source_range_move_the_intercept() -> None:
    values = np.array([-2000.0, 3000.0])
    assert fitted_intercept(values, 1.0, -1024.0, signed=False) == -2000.0
    assert fitted_intercept(np.array([-1000.0, 500.0]), 1.0, -1024.0, signed=False) == -1024.0


def test_derived_secondary_capture_keeps_real_world_values(phantom, tmp_path) -> None:
    volume, _ = phantom
    derived = DerivedImage(volume.array + 7.0, "Test offset")
    template = load_template_by_name("ct_denoise")
    results = build_results(
        volume, Prediction(derived_image=derived), template, tags=["derived_sc"]
    )
    images = results.objects["derived_sc"]
    assert len(images) == volume.shape[0]
    image = images[len(images) // 2]
    path = save(image, tmp_path / "derived_sc.dcm")
    assert dciodvfy_errors(path) == []
    read = pydicom.dcmread(path)
    assert read.SOPClassUID == SC_IMAGE_STORAGE
    index = volume.sop_instance_uids.index(read.SourceImageSequence[0].ReferencedSOPInstanceUID)
    real = read.pixel_array * float(read.RescaleSlope) + float(read.RescaleIntercept)
    np.testing.assert_allclose(real, derived.values[index], atol=0.5 + 1e-6)


def test_worker_skips_what_a_prediction_cannot_fill(phantom) -> None:
    volume, labels = phantom
    only_image = Prediction(derived_image=DerivedImage(volume.array, "copy"))
    tags = {"seg", "sr", "pmap", "derived", "ko.derived+seg"}
    skipped = unavailable_tags(only_image, tags)
    assert set(skipped) == {"seg", "sr", "pmap"}
    assert "attribution" in skipped["pmap"] and "label map" in skipped["seg"]
    segmentation = Prediction(label_map=labels.astype(np.uint8))
    assert set(unavailable_tags(segmentation, tags)) == {"pmap", "derived"}


def test_a_denoiser_without_destinations_keeps_its_derived_series(
    database, clock, tmp_path: Path
) -> None:
    """Results kept on the node: the default SEG + SR profile would keep nothing of an
    image-to-image routine, so the worker keeps what it made (its derived series)."""

    from node.contract.kinds import file_tag
    from plugins.ct_denoise import PLUGIN as CtDenoise
    from tests.support.worker import run_one_job

    datasets, _ = make_abdomen_ct(n_slices=8, rows=96, columns=96, pixel_spacing_mm=4.0, seed=3)
    job = run_one_job(database, clock, tmp_path, datasets, CtDenoise, rule="denoise")
    assert job.plugin == "ct_denoise"
    tags = {file_tag(p.name) for p in Path(job.result_dir).glob("*.dcm")}
    assert tags == {"derived"}


def test_bad_maps_are_refused_with_the_reason(phantom) -> None:
    volume, _ = phantom
    with pytest.raises(ValueError, match="NaN"):
        Attribution(np.full(volume.shape, np.nan, np.float32), "Grad-CAM", "Liver")
    with pytest.raises(ValueError, match="3-D"):
        DerivedImage(np.zeros((4, 4)), "x")
    small = Prediction(attribution=Attribution(np.zeros((2, 3, 4), np.float32), "x", "y"))
    with pytest.raises(Exception, match="differs from the source volume"):
        build_results(volume, small, load_template_by_name("ct_organs"), tags=["pmap"])
    with pytest.raises(Exception, match="needs a derived image"):
        build_results(volume, Prediction(), load_template_by_name("ct_denoise"), tags=["derived"])


def test_ct_denoise_reduces_noise_on_a_held_out_phantom() -> None:
    from plugins.ct_denoise import CtDenoisePlugin

    datasets, truth = make_abdomen_ct(
        n_slices=6, rows=128, columns=128, pixel_spacing_mm=3.2, slice_thickness_mm=60.0,
        seed=20_001, noise_sd_hu=0.0,
    )  # fmt: skip
    clean = assemble_volume(datasets)
    rng = np.random.default_rng(7)
    noisy_values = np.rint(clean.array + rng.normal(0.0, 20.0, clean.shape)).astype(np.float32)
    noisy = Volume(noisy_values, clean.spacing, clean.affine, clean.datasets)
    plugin = CtDenoisePlugin()
    plugin.load(torch.device("cpu"))
    prediction = plugin.run(noisy, RunContext(1, "test", torch.device("cpu")))
    assert prediction.derived_image is not None and prediction.label_map is None
    denoised = prediction.derived_image.values
    assert denoised.shape == clean.shape
    body = truth.labels > 0
    before = float(np.std((noisy_values - clean.array)[body]))
    after = float(np.std((denoised - clean.array)[body]))
    assert before == pytest.approx(20.0, rel=0.05)
    assert after < 0.6 * before


def test_ct_organs_explain_attributes_the_liver_score_to_the_liver() -> None:
    from plugins.ct_organs_explain import CtOrgansExplainPlugin

    datasets, truth = make_abdomen_ct(
        n_slices=40, rows=96, columns=96, pixel_spacing_mm=4.4, slice_thickness_mm=10.0,
        seed=20_002,
    )  # fmt: skip
    volume = assemble_volume(datasets)
    plugin = CtOrgansExplainPlugin()
    plugin.load(torch.device("cpu"))
    attribution = plugin.explain(volume, RunContext(1, "test", torch.device("cpu")))
    assert attribution.method == "gradient saliency" and attribution.target == "Liver"
    assert attribution.label_value == LIVER
    values = attribution.values
    assert values.shape == volume.shape and values.dtype == np.float32
    liver = truth.labels == LIVER
    outside_body = truth.labels == 0
    elsewhere_in_body = (truth.labels > 0) & ~liver
    assert values[liver].mean() > 5 * values[elsewhere_in_body].mean()
    assert values[liver].mean() > 50 * values[outside_body].mean()


@pytest.mark.slow
def test_node_sends_denoised_series_and_attribution_maps_into_orthanc(tmp_path) -> None:
    from tests.support.pacs import node_config, orthanc_for_node
    from tools.node_process import NodeProcess
    from tools.synthetic.chest_ct import write_series

    profile = ["seg", "sr", "pmap", "heatmap_sc", "derived", "derived_sc"]
    rules = [
        {"name": "denoise", "match": {"Modality": "CT"}, "plugin": "ct_denoise"},
        {"name": "organs-explain", "match": {"Modality": "CT"}, "plugin": "ct_organs_explain"},
    ]
    datasets, truth = make_abdomen_ct(
        n_slices=40, rows=96, columns=96, pixel_spacing_mm=4.0, slice_thickness_mm=5.0,
        seed=20_003, series_description="Abdomen phantom",
    )  # fmt: skip
    files = write_series(datasets, tmp_path / "series")
    study_uid = datasets[0].StudyInstanceUID
    wanted = {SERIES_NUMBERS[ResultKind(kind)]: kind for kind in profile}
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = node_config(node_port, pacs, rules, results=profile)
        with NodeProcess(config, workdir=tmp_path / "node"):
            upload_many(pacs.client, files)
            send_to_modality(pacs.client, "ainode", [lookup_study(pacs.client, study_uid)])

            def arrived() -> dict[str, dict] | None:
                found = {}
                for series in find_series(pacs.client, study_uid):
                    number = int(series["MainDicomTags"].get("SeriesNumber", 0))
                    if number in wanted and series.get("IsStable"):
                        found[wanted[number]] = series
                return found if set(found) == set(profile) else None

            series = wait_until(arrived, 600, message="every result series")
        derived = [instance_dataset(pacs.client, i) for i in series["derived"]["Instances"]]
        assert len(derived) == len(datasets) == len(series["derived_sc"]["Instances"])
        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        for image in derived:
            source = by_uid[image.SourceImageSequence[0].ReferencedSOPInstanceUID]
            assert image.ImagePositionPatient == source.ImagePositionPatient
            assert image.FrameOfReferenceUID == source.FrameOfReferenceUID
            assert list(image.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        (pmap_id,) = series["pmap"]["Instances"]
        pmap = instance_dataset(pacs.client, pmap_id)
        assert int(pmap.NumberOfFrames) == len(datasets)
        assert "of Liver" in pmap.ContentDescription
        heat = [instance_dataset(pacs.client, i) for i in series["heatmap_sc"]["Instances"]]
        assert heat and all(im.BurnedInAnnotation == "YES" for im in heat)
        checked = {
            "pmap": pmap,
            "heatmap_sc": heat[0],
            "derived": derived[len(derived) // 2],
            "derived_sc": instance_dataset(pacs.client, series["derived_sc"]["Instances"][0]),
        }
        for kind, dataset in checked.items():
            path = save(dataset, tmp_path / f"{kind}.dcm")
            assert dciodvfy_errors(path) == [], kind
        # The denoised series is less noisy than its source inside the liver.
        denoised = assemble_volume(derived)
        source_volume = assemble_volume(datasets)
        liver = ndimage.binary_erosion(truth.labels == LIVER, iterations=2)
        assert liver.sum() > 1000
        assert np.std(denoised.array[liver]) < 0.7 * np.std(source_volume.array[liver])


def test_a_template_may_declare_no_segments() -> None:
    template = load_template_by_name("ct_denoise")
    assert template.segments == ()
    assert template.algorithm.name == "ainode-denoise-demo"
