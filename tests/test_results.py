"""SEG + SR built from a synthetic chest phantom: validators, read-back, determinism, revisions."""

from __future__ import annotations

import copy
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.contract.assemble import assemble_volume
from node.contract.plugin import Prediction
from node.contract.template import default_template_dir
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results import (
    SEG_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    ResultSet,
    ResultTemplate,
    build_results,
    build_sr,
    derive_uid,
    instance_set_hash,
    load_template,
    load_template_by_name,
)
from node.results.identity import SeriesIdentity
from node.results.measure import surface_area_mm2
from tests.support.validators import dciodvfy_errors, dciodvfy_output, dciodvfy_warnings
from tools.synthetic.chest_ct import ChestPhantomTruth, make_chest_ct

N_SLICES = 30
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class Case:
    truth: ChestPhantomTruth
    volume: Volume
    prediction: Prediction
    results: ResultSet
    seg_path: Path
    sr_path: Path


def lung_prediction(volume: Volume, truth: ChestPhantomTruth) -> Prediction:
    """Label every voxel centre inside the phantom's right (1) or left (2) lung ellipsoid."""
    slices, rows, columns = np.meshgrid(
        np.arange(volume.shape[0]),
        np.arange(volume.shape[1]),
        np.arange(volume.shape[2]),
        indexing="ij",
    )
    index = np.stack([columns, rows, slices, np.ones_like(slices)], axis=-1).astype(float)
    patient = index @ volume.affine.T  # (column, row, slice, 1) -> LPS mm
    label_map = np.zeros(volume.shape, dtype=np.uint8)
    for label, lung in ((1, truth.right_lung), (2, truth.left_lung)):
        offset = (patient[..., :3] - np.asarray(lung.center_mm)) / np.asarray(lung.semi_axes_mm)
        label_map[(offset**2).sum(axis=-1) <= 1.0] = label
    measurements = {}
    for label in (1, 2):
        mask = label_map == label
        measurements[label] = {
            "volume_cm3": float(mask.sum() * volume.voxel_volume_mm3 / 1000.0),
            "mean_hu": float(volume.array[mask].mean()),
        }
    return Prediction(label_map=label_map, measurements=measurements)


def read_report(path: Path) -> tuple[hd.sr.Comprehensive3DSR, hd.sr.MeasurementReport]:
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return sr, report


@dataclass(frozen=True)
class Source:
    datasets: list[Dataset]
    truth: ChestPhantomTruth

    def volume(self, n_slices: int = N_SLICES) -> Volume:
        return assemble_volume(self.datasets[:n_slices])


@pytest.fixture(scope="module")
def template() -> ResultTemplate:
    return load_template_by_name("ct_lungs")


@pytest.fixture(scope="module")
def source() -> Source:
    datasets, truth = make_chest_ct(
        n_slices=N_SLICES, rows=96, columns=96, pixel_spacing_mm=4.0, slice_thickness_mm=8.0
    )
    return Source(datasets, truth)


@pytest.fixture(scope="module")
def case(
    source: Source, template: ResultTemplate, tmp_path_factory: pytest.TempPathFactory
) -> Case:
    volume = source.volume()
    prediction = lung_prediction(volume, source.truth)
    results = build_results(volume, prediction, template)
    directory = tmp_path_factory.mktemp("results")
    seg_path, sr_path = directory / "seg.dcm", directory / "sr.dcm"
    results.seg.save_as(seg_path, enforce_file_format=True)
    results.sr.save_as(sr_path, enforce_file_format=True)
    return Case(source.truth, volume, prediction, results, seg_path, sr_path)


def test_phantom_prediction_has_empty_slices_and_both_lungs(case: Case) -> None:
    per_slice = case.prediction.label_map.reshape(N_SLICES, -1).max(axis=1)
    assert per_slice[0] == 0 and per_slice[-1] == 0, "top and bottom slices must be empty"
    assert set(np.unique(case.prediction.label_map)) == {0, 1, 2}


def test_seg_and_sr_pass_dciodvfy_without_errors(case: Case) -> None:
    for path in (case.seg_path, case.sr_path):
        report = dciodvfy_output(path)
        assert report, f"dciodvfy said nothing about {path}"
        assert dciodvfy_errors(path) == [], "\n".join(report)
    # The one known warning: this dciodvfy does not list Device UID among the Contributing
    # Equipment Sequence attributes; PS3.3 C.12.1 (as extracted in highdicom's standard
    # tables) and IHE AIR have it there. Anything else is unexpected.
    for path in (case.seg_path, case.sr_path):
        unexpected = [
            line
            for line in dciodvfy_warnings(path)
            if "(0x0018,0x1002) UI Device UID" not in line
            and "this is a Standard Extended SOP Class" not in line
        ]
        assert unexpected == [], f"{path.name}: {unexpected}"


def test_dciodvfy_helper_reports_errors(case: Case, tmp_path: Path) -> None:
    broken = pydicom.dcmread(case.seg_path)
    del broken.SegmentSequence
    del broken.ContentLabel
    path = tmp_path / "broken.dcm"
    broken.save_as(path)
    errors = dciodvfy_errors(path)
    assert any("<SegmentSequence>" in line for line in errors), errors
    assert any("<ContentLabel>" in line for line in errors), errors


def test_dsrdump_parses_the_sr(case: Case) -> None:
    dsrdump = shutil.which("dsrdump")
    if dsrdump is None:
        pytest.skip("dcmtk dsrdump not installed")
    result = subprocess.run(
        [dsrdump, str(case.sr_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
    assert "Imaging Measurement Report" in result.stdout
    assert '"right-lung"' in result.stdout and '"left-lung"' in result.stdout
    assert "Referenced Segment" in result.stdout


def test_seg_is_a_new_series_in_the_source_study(case: Case) -> None:
    seg = pydicom.dcmread(case.seg_path)
    source = case.volume.datasets[0]
    assert seg.SOPClassUID == SEGMENTATION_STORAGE
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesNumber == SEG_SERIES_NUMBER
    assert seg.SeriesDescription == "AI lungs SEG"
    assert seg.BodyPartExamined == source.BodyPartExamined == "CHEST"
    referenced = seg.ReferencedSeriesSequence
    assert len(referenced) == 1
    assert referenced[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced[0].ReferencedInstanceSequence} == (
        set(case.volume.sop_instance_uids)
    )


def test_seg_segments_are_coded_from_the_template(case: Case, template: ResultTemplate) -> None:
    seg = pydicom.dcmread(case.seg_path)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    for item, spec in zip(seg.SegmentSequence, template.segments, strict=True):
        assert item.SegmentLabel == spec.label
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        assert type_item.CodeValue == "39607008"
        assert spec.type_modifier is not None
        modifier = type_item.SegmentedPropertyTypeModifierCodeSequence[0]
        assert (modifier.CodeValue, modifier.CodingSchemeDesignator) == (
            spec.type_modifier.value,
            "SCT",
        )
        assert item.TrackingID == spec.tracking_id
        assert item.TrackingUID == case.results.uids.tracking_uid(spec.label_value)
        assert list(item.RecommendedDisplayCIELabValue) == list(spec.display_colour.value)
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == template.algorithm.name
        assert algorithm.AlgorithmVersion == template.algorithm.version
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert f"template_sha256={template.sha256}" in algorithm.AlgorithmParameters


@pytest.mark.parametrize("path_attr", ["seg_path", "sr_path"])
def test_contributing_equipment_names_the_algorithm(
    case: Case, template: ResultTemplate, path_attr: str
) -> None:
    dataset = pydicom.dcmread(getattr(case, path_attr))
    items = [
        item
        for item in dataset.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == template.algorithm.name
    ]
    assert len(items) == 1
    item = items[0]
    purpose = item.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    assert item.Manufacturer == template.algorithm.manufacturer
    assert item.SoftwareVersions == template.algorithm.version
    assert item.DeviceUID == template.algorithm.device_uid
    assert template.sha256 in item.ContributionDescription
    assert dataset.DeviceUID == template.algorithm.device_uid


def test_seg_frames_hold_the_label_map_voxel_for_voxel(case: Case) -> None:
    seg = pydicom.dcmread(case.seg_path)
    n_segments = 2
    assert int(seg.NumberOfFrames) == N_SLICES * n_segments, "empty frames must be kept"
    frames = seg.pixel_array
    slice_of = {uid: index for index, uid in enumerate(case.volume.sop_instance_uids)}
    seen = set()
    for frame_index, frame_item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment = int(frame_item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = frame_item.DerivationImageSequence[0].SourceImageSequence[0]
        slice_index = slice_of[source.ReferencedSOPInstanceUID]
        source_header = case.volume.datasets[slice_index]
        position = [float(v) for v in frame_item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in source_header.ImagePositionPatient])
        expected = case.prediction.label_map[slice_index] == segment  # label value = number
        assert np.array_equal(frames[frame_index].astype(bool), expected), (
            f"frame {frame_index + 1} (segment {segment}, slice {slice_index}) differs"
        )
        seen.add((segment, slice_index))
    assert len(seen) == N_SLICES * n_segments


def test_seg_reads_back_with_highdicom(case: Case) -> None:
    seg = hd.seg.segread(case.seg_path)
    label_map = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(case.volume.sop_instance_uids),
        combine_segments=True,
    )
    assert label_map.shape == case.prediction.label_map.shape
    assert np.array_equal(label_map, case.prediction.label_map)


def test_sr_reads_back_measurements_and_tracking_uids(case: Case, template: ResultTemplate) -> None:
    sr, report = read_report(case.sr_path)
    seg = pydicom.dcmread(case.seg_path)
    assert sr.StudyInstanceUID == case.volume.study_instance_uid
    assert sr.SeriesNumber == SR_SERIES_NUMBER
    assert sr.SeriesDescription == "AI lungs SR"
    assert "PredecessorDocumentsSequence" not in sr
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    seg_tracking = {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence}
    for group, spec in zip(groups, template.segments, strict=True):
        reference = group.referenced_segment
        assert reference is not None
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert reference.referenced_sop_class_uid == SEGMENTATION_STORAGE
        assert reference.referenced_segment_numbers is not None
        (number,) = reference.referenced_segment_numbers
        assert number == template.segment_number(spec.label_value)
        source_series = reference.source_series_for_segmentation
        assert source_series is not None and source_series.value == case.volume.series_instance_uid
        assert group.finding_type is not None and group.finding_type.value == spec.type.value
        assert group.tracking_uid == seg_tracking[number]
        assert group.tracking_identifier == spec.tracking_id
        values = {
            (m.name.value, m.unit.value, m.derivation.value if m.derivation else None): m.value
            for m in group.get_measurements()
        }
        expected = case.prediction.measurements[spec.label_value]
        mask = case.prediction.label_map == spec.label_value
        lung = case.truth.right_lung if spec.label_value == 1 else case.truth.left_lung
        assert (
            values
            == {
                ("118565006", "cm3", None): expected["volume_cm3"],  # the plugin's values
                ("112031", "[hnsf'U]", "373098007"): expected["mean_hu"],
                # computed by the node (template "compute:")
                ("112031", "[hnsf'U]", "386136009"): pytest.approx(
                    float(case.volume.array[mask].std(dtype=np.float64))
                ),
                ("81827009", "mm", "56851009"): pytest.approx(
                    2 * max(lung.semi_axes_mm[:2]),
                    abs=4.0,  # within a pixel of the ellipsoid
                ),
                ("C0JK", "cm2", None): pytest.approx(
                    surface_area_mm2(mask, case.volume.spacing) / 100.0
                ),
            }
        )
        mean = group.get_measurements(name=template.measurement("mean_hu").concept.concept)[0]
        assert mean.derivation is not None and mean.derivation.value == "373098007"
        modifiers = {
            item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue")
            for item in mean[0].ContentSequence
            if item.ValueType == "TEXT"
        }
        assert modifiers["Algorithm Name"] == template.algorithm.name  # TID 4019
        assert modifiers["Algorithm Version"] == template.algorithm.version


def test_sr_has_image_library_observer_and_procedure(case: Case, template: ResultTemplate) -> None:
    sr, report = read_report(case.sr_path)
    library = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"
    ]
    assert len(library) == 1
    referenced = set()
    for group in library[0].ContentSequence:
        for entry in group.ContentSequence:
            if entry.ValueType == "IMAGE":
                referenced.add(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    assert referenced == set(case.volume.sop_instance_uids)
    (observer,) = report.get_observer_contexts(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device")
    )
    device = observer.observer_identifying_attributes
    assert isinstance(device, hd.sr.DeviceObserverIdentifyingAttributes)
    assert device.uid == template.algorithm.device_uid
    assert device.manufacturer_name == template.algorithm.manufacturer
    procedure = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"
    ]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == "24627-2"


def test_procedure_reported_is_the_source_studys(source: Source, template: ResultTemplate) -> None:
    """The SR reports the procedure the source study names, not the template's default."""
    coded = Dataset()
    coded.CodeValue, coded.CodingSchemeDesignator = "RPID16", "RADLEX"
    coded.CodeMeaning = "CT Chest without IV Contrast"
    datasets = [copy.deepcopy(ds) for ds in source.datasets]
    for ds in datasets:
        ds.ProcedureCodeSequence = [coded]
    volume = assemble_volume(datasets)
    sr = build_results(volume, lung_prediction(volume, source.truth), template).sr
    (procedure,) = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"
    ]
    reported = procedure.ConceptCodeSequence[0]
    assert (reported.CodeValue, reported.CodingSchemeDesignator) == ("RPID16", "RADLEX")
    assert reported.CodeMeaning == "CT Chest without IV Contrast"


def test_anatomic_region_reaches_the_seg(
    case: Case, template: ResultTemplate, tmp_path: Path
) -> None:
    """A segment's ``anatomic_region`` is the SEG's Anatomic Region Sequence."""
    text = (default_template_dir() / "ct_lungs.yaml").read_text()
    thorax = (
        '    anatomic_region: {value: "51185008", scheme: SCT,'
        ' meaning: "Thoracic structure (body structure)"}\n'
    )
    text = text.replace("    colour: [0, 151, 206]\n", thorax + "    colour: [0, 151, 206]\n")
    path = tmp_path / "ct_lungs.yaml"
    path.write_text(text)
    seg = build_results(case.volume, case.prediction, load_template(path)).seg
    right, left = seg.SegmentSequence
    region = right.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning) == (
        "51185008",
        "SCT",
        "Thoracic structure (body structure)",
    )
    assert "AnatomicRegionSequence" not in left


def test_building_twice_gives_the_same_uids(case: Case, template: ResultTemplate) -> None:
    again = build_results(case.volume, case.prediction, template)
    for attribute in ("seg_series", "seg_instance", "sr_series", "sr_instance"):
        assert getattr(again.uids, attribute) == getattr(case.results.uids, attribute)
    assert again.seg.SOPInstanceUID == case.results.seg.SOPInstanceUID
    assert again.sr.SOPInstanceUID == case.results.sr.SOPInstanceUID
    assert [s.TrackingUID for s in again.seg.SegmentSequence] == [
        s.TrackingUID for s in case.results.seg.SegmentSequence
    ]
    uids = {
        case.results.uids.seg_series,
        case.results.uids.seg_instance,
        case.results.uids.sr_series,
        case.results.uids.sr_instance,
        case.results.uids.tracking_uid(1),
        case.results.uids.tracking_uid(2),
    }
    assert len(uids) == 6


def test_every_kind_is_rebuilt_with_the_same_uids(case: Case, template: ResultTemplate) -> None:
    """A re-sent job replaces its earlier objects in the PACS instead of duplicating them."""
    tags = ["seg", "labelmap_seg", "sr", "gsps", "sc", "ko.gsps+sc"]
    first, again = (
        build_results(case.volume, case.prediction, template, tags=tags) for _ in range(2)
    )

    def identity(results: ResultSet) -> list[tuple[str, str, str]]:
        return [
            (tag, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for tag, ds in results.tagged()
        ]

    built = identity(first)
    assert {tag for tag, _, _ in built} == set(tags)
    assert len(built) > len(tags)  # one SC image per slice with a finding
    assert identity(again) == built
    assert len({sop for _, _, sop in built}) == len(built)


def test_other_input_or_template_gives_other_uids(
    case: Case, source: Source, template: ResultTemplate, tmp_path: Path
) -> None:
    fewer = source.volume(N_SLICES - 1)  # the series before its last instance arrived
    smaller = build_results(fewer, lung_prediction(fewer, source.truth), template)
    assert smaller.uids.seg_instance != case.results.uids.seg_instance
    assert smaller.uids.sr_instance != case.results.uids.sr_instance
    assert smaller.uids.seg_series != case.results.uids.seg_series
    assert smaller.uids.tracking_uid(1) != case.results.uids.tracking_uid(1)

    edited = tmp_path / "ct_lungs.yaml"
    edited.write_text(template.path.read_text() + "# edited\n")
    other_template = load_template(edited)
    assert other_template.sha256 != template.sha256
    rebuilt = build_results(case.volume, case.prediction, other_template)
    assert rebuilt.uids.sr_instance != case.results.uids.sr_instance


def test_revision_two_supersedes_the_first(
    source: Source, template: ResultTemplate, tmp_path: Path
) -> None:
    early = source.volume(N_SLICES - 2)  # results sent before the series was complete
    first = build_results(early, lung_prediction(early, source.truth), template)
    complete = source.volume()
    complete_prediction = lung_prediction(complete, source.truth)
    second = build_results(
        complete,
        complete_prediction,
        template,
        revision=2,
        predecessor_sr=first.sr_reference,
    )
    assert second.sr.SeriesDescription == "AI lungs SR (rev 2, supersedes earlier)"
    assert second.seg.SeriesDescription == "AI lungs SEG (rev 2, supersedes earlier)"
    path = tmp_path / "sr2.dcm"
    second.sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    stored = pydicom.dcmread(path)
    study = stored.PredecessorDocumentsSequence[0]
    assert study.StudyInstanceUID == first.sr.StudyInstanceUID
    series = study.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.sr.SeriesInstanceUID
    instance = series.ReferencedSOPSequence[0]
    assert instance.ReferencedSOPInstanceUID == first.sr.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == first.sr.SOPClassUID
    # The dataset itself is accepted as well.
    again = build_results(
        complete, complete_prediction, template, revision=2, predecessor_sr=first.sr
    )
    assert again.sr.SOPInstanceUID == second.sr.SOPInstanceUID


def test_same_input_again_rebuilds_the_same_sr_without_predecessor(
    case: Case, template: ResultTemplate
) -> None:
    # The worker passes the previous SR; when the instances are the same (a re-sent
    # series), that SR is this one: it must be re-created, not superseded by itself.
    again = build_results(
        case.volume,
        case.prediction,
        template,
        revision=2,
        predecessor_sr=case.results.sr_reference,
    )
    assert again.sr.SOPInstanceUID == case.results.sr.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in again.sr
    with pytest.raises(ValueError, match="cannot supersede itself"):
        build_sr(
            case.volume,
            case.prediction,
            template,
            case.results.seg,
            series=SeriesIdentity.of(
                template,
                series_instance_uid=case.results.uids.sr_series,
                series_number=SR_SERIES_NUMBER,
                series_description=None,
            ),
            sop_instance_uid=case.results.uids.sr_instance,
            revision=2,
            predecessor=case.results.sr_reference,
        )
    with pytest.raises(ValueError, match="revision"):
        build_results(case.volume, case.prediction, template, revision=0)


def test_missing_segment_keeps_its_empty_frames_and_group(
    case: Case, template: ResultTemplate, tmp_path: Path
) -> None:
    label_map = np.where(case.prediction.label_map == 1, 1, 0).astype(np.uint8)
    prediction = Prediction(
        label_map=label_map,
        measurements={1: case.prediction.measurements[1], 2: {"mean_hu": float("nan")}},
    )
    results = build_results(case.volume, prediction, template)
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    results.seg.save_as(seg_path, enforce_file_format=True)
    results.sr.save_as(sr_path, enforce_file_format=True)
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    seg = hd.seg.segread(seg_path)
    assert seg.number_of_segments == 2
    assert int(seg.NumberOfFrames) == 2 * N_SLICES
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(case.volume.sop_instance_uids), combine_segments=True
    )
    assert np.array_equal(pixels, label_map)
    groups = read_report(sr_path)[1].get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    # The plugin's NaN and the statistics of an empty segment are left out; its
    # computed volume (0), diameter... are not: they are true.
    names = {
        (m.name.value, m.derivation.value if m.derivation else None): m.value
        for m in groups[1].get_measurements()
    }
    assert names[("118565006", None)] == 0.0
    assert ("112031", "373098007") not in names and ("112031", "386136009") not in names


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("unknown_label", "label values [7]"),
        ("unknown_key", "not declared in the template"),
        ("unknown_measured_label", "measurements for labels [5]"),
        ("wrong_shape", "differs from volume shape"),
        ("float_labels", "must be integer"),
    ],
)
def test_prediction_must_match_the_template(
    case: Case, template: ResultTemplate, change: str, message: str
) -> None:
    label_map = case.prediction.label_map.copy()
    measurements = {k: dict(v) for k, v in case.prediction.measurements.items()}
    if change == "unknown_label":
        label_map[0, 0, 0] = 7
    elif change == "unknown_key":
        measurements[1]["max_hu"] = 3.0
    elif change == "unknown_measured_label":
        measurements[5] = {"volume_cm3": 1.0}
    elif change == "wrong_shape":
        label_map = label_map[:-1]
    elif change == "float_labels":
        label_map = label_map.astype(np.float32)
    with pytest.raises(TemplateError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_results(case.volume, Prediction(label_map, measurements), template)


def test_derived_uids_are_valid_and_keep_part_boundaries() -> None:
    uid = derive_uid("ab", "c")
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert pydicom.uid.UID(uid).is_valid
    assert uid == derive_uid("ab", "c")
    assert uid != derive_uid("a", "bc")
    assert instance_set_hash(["2", "1", "1"]) == instance_set_hash(["1", "2"])
    with pytest.raises(ValueError):
        derive_uid()
