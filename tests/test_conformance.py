"""Conformance gate: every kind of result object, from synthetic CT and MR and from real files.

For each source (synthetic chest CT, synthetic coronal head MR, pydicom's ``CT_small.dcm``
and ``MR_small.dcm``) the node builds every kind it can produce (BINARY, LABELMAP and
FRACTIONAL SEG, SR referencing the BINARY and the FRACTIONAL SEG, GSPS, SC, KO) and
the objects, written by the node's writer (:mod:`node.results.encode`, whose bytes must
equal pydicom's ``dcmwrite`` of the same object), must pass:

* dciodvfy with zero errors (and only the known warnings);
* dcentvfy across source + outputs with zero errors;
* dsrdump (dcmtk) parsing every SR;
* highdicom read-back equal to what was written;
* dcmqi's ``segimage2itkimage`` (3D Slicer's SEG reader) giving the label map back on the
  source geometry;
* :func:`tools.lint_templates.lint_results` (viewer requirements) with no problem.

From the same sources the kinds other routines give are built too (Parametric Map and
heat-map SC of an attribution, derived series of the source's IOD and derived SC, an SR
with radiomics features, a classifier/detector's SR, GSPS, SC and KO) and checked with
dciodvfy and with dcentvfy across source, segmentation results and these.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage

from node.contract.assemble import assemble_volume
from node.contract.kinds import (
    ATTRIBUTION_KINDS,
    DERIVED_KINDS,
    ResultKind,
    file_name,
    profile_tags,
    tag_kind,
)
from node.contract.plugin import (
    Attribution,
    Classification,
    DerivedImage,
    Detection,
    Prediction,
)
from node.contract.volume import Volume
from node.results import ResultTemplate, build_results, load_template, load_template_by_name
from node.results.analysis import Analysis
from node.results.encode import encode_body, encode_file
from node.results.identity import SeriesIdentity
from node.results.ko.selection import build_ko
from node.results.sc.overlay import render_slice
from tests.support.nrrd import NrrdImage, read_nrrd
from tests.support.validators import (
    dcentvfy_output,
    dciodvfy_output,
    dsrdump,
    segimage2itkimage,
)
from tests.test_results import lung_prediction
from tools.lint_templates import lint_results
from tools.synthetic.chest_ct import make_chest_ct
from tools.synthetic.head_mr import make_head_mr

TEMPLATES = Path(__file__).parent / "data" / "templates"
#: TID 1501 puts the finding category among the qualitative evaluations.
FINDING_CATEGORY = "276214006"
#: Every kind a segmentation fills, in one profile, plus an SR that references the
#: FRACTIONAL SEG. A REG comes only from a registration (tests/test_registration.py), maps
#: and derived images from routines that give them (tests/test_maps_and_derived.py).
NOT_FROM_SEGMENTATION = {ResultKind.REG, *ATTRIBUTION_KINDS, *DERIVED_KINDS}
EVERY_TAG = sorted(
    profile_tags([k.value for k in ResultKind if k not in NOT_FROM_SEGMENTATION])
    | profile_tags(["fractional_seg", "sr"])
)
#: dciodvfy warnings accepted everywhere (each explained where it is matched).
KNOWN_WARNINGS = (
    # This dciodvfy does not list Device UID in General Equipment / Contributing
    # Equipment; PS3.3 C.12.1 and IHE AIR have it.
    "(0x0018,0x1002) UI Device UID",
    "this is a Standard Extended SOP Class",
    # Quirks of pydicom's test files that results copy with the patient and study:
    # CT_small.dcm has PatientWeight 0, MR_small.dcm a retired Person Name form.
    "Value is zero for value 1 of attribute <Patient's Weight>",
    "PN Name of Physician(s) Reading Study  PN [1] = <----> - Retired Person Name form",
    # … and its Operators' Name, which a derived image (a copy of the source's header) keeps.
    "PN Operators' Name  PN [1] = <----> - Retired Person Name form",
    # The synthetic head MR has Image Type ORIGINAL\PRIMARY\M\NONE (as Siemens MR do);
    # a derived image keeps values 3 and on (PS3.3 C.7.6.1.1.2).
    "Unrecognized defined term <M> for value 3 of attribute <Image Type>",
    # Neither test file has BodyPartExamined, so the GSPS carries an empty Laterality
    # (type 2C, asked for as an error otherwise): "empty when actually unknown" is true.
    "is only permitted to be empty when actually unknown",
    # pyradiomics features without an IBSI code are coded in the node's private scheme
    # (PS3.16 8: a "99" prefix), declared in Coding Scheme Identification Sequence
    # (checked in test_routine_objects_pass_dciodvfy); dciodvfy only knows standard ones.
    "Unrecognized defined term <99AINODE> for value 1 of attribute <Coding Scheme Designator>",
)


@dataclass(frozen=True)
class Built:
    name: str
    volume: Volume
    prediction: Prediction
    template: ResultTemplate
    analysis: Analysis
    source_paths: list[Path]
    paths: dict[str, list[Path]]  # tag -> files
    objects: dict[str, list[Dataset]]

    def files(self, kind: ResultKind) -> list[Path]:
        return [p for tag, paths in self.paths.items() if tag_kind(tag) is kind for p in paths]


def _node_file(dataset: Dataset) -> bytes:
    """The file the worker writes (:func:`node.results.encode.encode_file`), checked
    against pydicom's ``dcmwrite`` of the same object byte for byte."""
    expected = BytesIO()
    pydicom.dcmwrite(expected, copy.deepcopy(dataset), enforce_file_format=True)
    assert encode_body(dataset) is not None, f"{dataset.SOPClassUID.name} left to pydicom"
    encoded = encode_file(dataset)
    assert encoded == expected.getvalue(), f"{dataset.SOPClassUID.name}: bytes differ"
    return encoded


def _probabilities(label_map: np.ndarray, labels: tuple[int, ...]) -> np.ndarray:
    """Soft probabilities: 0.9 inside each label, 0.1 on its one-voxel rim, 0 elsewhere."""
    from scipy import ndimage

    channels = []
    for label in labels:
        mask = label_map == label
        rim = ndimage.binary_dilation(mask) & ~mask
        channels.append(np.where(mask, 0.9, np.where(rim, 0.1, 0.0)).astype(np.float32))
    return np.stack(channels)


def _head_prediction(volume: Volume) -> Prediction:
    values = volume.array
    label_map = np.zeros(volume.shape, dtype=np.uint8)
    label_map[values > 300] = 1
    label_map[values > 900] = 2
    return Prediction(
        label_map=label_map,
        findings={2: {"presence": "present"}},
        probabilities=_probabilities(label_map, (1, 2)),
    )


def _build(
    name: str,
    datasets: list[Dataset],
    template: ResultTemplate,
    prediction_of: object,
    directory: Path,
) -> Built:
    source_dir = directory / "source"
    source_dir.mkdir(parents=True)
    source_paths = []
    for index, dataset in enumerate(datasets):
        path = source_dir / f"src_{index:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        source_paths.append(path)
    volume = assemble_volume([pydicom.dcmread(p) for p in source_paths])
    prediction = prediction_of(volume)  # type: ignore[operator]
    results = build_results(volume, prediction, template, tags=EVERY_TAG)
    paths: dict[str, list[Path]] = {}
    out = directory / "results"
    out.mkdir()
    for tag, dataset in results.tagged():
        path = out / file_name(tag, str(dataset.SOPInstanceUID))
        path.write_bytes(_node_file(dataset))  # what the worker writes and sends
        paths.setdefault(tag, []).append(path)
    return Built(
        name,
        volume,
        prediction,
        template,
        Analysis(volume, prediction, template),
        source_paths,
        paths,
        results.objects,
    )


def _chest(directory: Path) -> Built:
    datasets, truth = make_chest_ct(
        n_slices=30, rows=96, columns=96, pixel_spacing_mm=4.0, slice_thickness_mm=8.0
    )

    def predict(volume: Volume) -> Prediction:
        prediction = lung_prediction(volume, truth)
        prediction.probabilities = _probabilities(prediction.label_map, (1, 2))
        return prediction

    return _build("chest-ct", datasets, load_template_by_name("ct_lungs"), predict, directory)


def _head(directory: Path) -> Built:
    datasets, _ = make_head_mr(orientation="coronal")
    template = load_template(TEMPLATES / "mr_lesion.yaml")
    return _build("head-mr-coronal", datasets, template, _head_prediction, directory)


def _ct_small(directory: Path) -> Built:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))

    def predict(volume: Volume) -> Prediction:
        label_map = np.zeros(volume.shape, dtype=np.uint8)
        label_map[(volume.array > -200) & (volume.array < 100)] = 1
        label_map[volume.array >= 100] = 2
        return Prediction(label_map=label_map, probabilities=_probabilities(label_map, (1, 2)))

    return _build(
        "pydicom-CT_small", [dataset], load_template_by_name("ct_lungs"), predict, directory
    )


def _mr_small(directory: Path) -> Built:
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    template = load_template(TEMPLATES / "mr_lesion.yaml")

    def predict(volume: Volume) -> Prediction:
        label_map = np.zeros(volume.shape, dtype=np.uint8)
        label_map[volume.array > 400] = 1
        label_map[volume.array > 1200] = 2
        return Prediction(label_map=label_map, probabilities=_probabilities(label_map, (1, 2)))

    return _build("pydicom-MR_small", [dataset], template, predict, directory)


SOURCES = {"chest-ct": _chest, "head-mr": _head, "ct-small": _ct_small, "mr-small": _mr_small}


@pytest.fixture(scope="module", params=sorted(SOURCES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return SOURCES[request.param](tmp_path_factory.mktemp(request.param))


def test_every_kind_is_built(built: Built) -> None:
    assert sorted(built.paths) == EVERY_TAG
    assert built.volume.modality in ("CT", "MR")
    assert len(built.files(ResultKind.SC)) == len(built.analysis.slices_with_findings) > 0


def assert_dciodvfy_clean(path: Path, what: str) -> None:
    """No dciodvfy error, and no warning outside :data:`KNOWN_WARNINGS`."""
    report = dciodvfy_output(path)
    errors = [line for line in report if line.startswith("Error")]
    assert errors == [], f"{what}: {errors}"
    warnings = [
        line
        for line in report
        if line.startswith("Warning") and not any(k in line for k in KNOWN_WARNINGS)
    ]
    assert warnings == [], f"{what}: {warnings}"


def test_dciodvfy_finds_no_errors(built: Built) -> None:
    for tag, paths in built.paths.items():
        for path in paths:
            assert_dciodvfy_clean(path, f"{built.name} {tag}")


def test_dcentvfy_finds_no_errors_across_source_and_results(built: Built) -> None:
    every = [p for paths in built.paths.values() for p in paths]
    report = dcentvfy_output([*built.source_paths, *every])
    errors = [line for line in report if line.startswith("Error")]
    assert errors == [], errors[:5]
    # dcentvfy assigns AccessionNumber to the Series IE of CT/MR but the Study IE of
    # other objects and warns on every pair; nothing else is expected.
    others = [
        line
        for line in report
        if line.startswith("Warning") and "<AccessionNumber> IE <Series> versus <Study>" not in line
    ]
    assert others == [], others[:5]


def test_dsrdump_parses_every_sr(built: Built, tmp_path: Path) -> None:
    if shutil.which("dsrdump") is None:
        pytest.skip("dcmtk dsrdump not installed")
    # KOs are SR documents too; Debian's dcmtk 3.6.9 does not know Label Map
    # Segmentation Storage (2024) and refuses a KO that lists one (an IMAGE item, as
    # PS3.3 has it), so the KO checked here is one without a LABELMAP SEG.
    (ko_tag,) = [t for t in built.paths if t.startswith("ko.")]
    listed = [t for t in ko_tag.partition(".")[2].split("+") if t != "labelmap_seg"]
    objects = [d for t in listed for d in built.objects[t]]
    ko = build_ko(
        built.template,
        objects,
        series=SeriesIdentity.of(
            built.template,
            series_instance_uid=generate_uid(),
            series_number=1,
            series_description="KO",
        ),
        sop_instance_uid=generate_uid(),
    )
    ko_path = tmp_path / "ko.dcm"
    ko.save_as(ko_path, enforce_file_format=True)
    for path in [*built.files(ResultKind.SR), ko_path]:
        result = dsrdump(path)
        assert result.returncode == 0, result.stderr
        assert not [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
    for path in built.files(ResultKind.SR):
        text = dsrdump(path).stdout
        assert "Imaging Measurement Report" in text and "Image Library" in text
        assert "SCOORD" in text and "POLYLINE" in text


def test_viewer_lint_is_clean(built: Built) -> None:
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in built.source_paths]
    objects = [pydicom.dcmread(p) for paths in built.paths.values() for p in paths]
    assert [str(p) for p in lint_results(sources, objects)] == []


def _label_map_of(seg: hd.seg.Segmentation, volume: Volume) -> np.ndarray:
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids), combine_segments=True
    )


def test_seg_reads_back_with_highdicom(built: Built) -> None:
    label_map = np.asarray(built.prediction.label_map)
    for tag in ("seg", "labelmap_seg"):
        seg = hd.seg.segread(built.paths[tag][0])
        assert np.array_equal(_label_map_of(seg, built.volume), label_map), tag
        numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
        assert [n for n in numbers if n != 0] == list(range(1, len(built.template.segments) + 1))
    binary = hd.seg.segread(built.paths["seg"][0])
    labelmap = hd.seg.segread(built.paths["labelmap_seg"][0])
    assert binary.SegmentationType == "BINARY" and labelmap.SegmentationType == "LABELMAP"
    assert labelmap.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    fractional = hd.seg.segread(built.paths["fractional_seg"][0])
    assert fractional.SegmentationType == "FRACTIONAL"
    pixels = fractional.get_pixels_by_source_instance(
        source_sop_instance_uids=list(built.volume.sop_instance_uids),
        combine_segments=False,
        rescale_fractional=True,
    )
    expected = np.moveaxis(np.asarray(built.prediction.probabilities), 0, -1)
    assert pixels.shape == expected.shape
    assert np.abs(pixels - expected).max() <= 1.0 / 255.0 + 1e-6


def _check_grid(image: NrrdImage, volume: Volume) -> None:
    affine = volume.affine
    assert np.allclose(image.origin, affine[:3, 3], atol=1e-3)
    assert np.allclose(image.directions[:2], affine[:3, :2].T, atol=1e-3)
    if volume.shape[0] > 1:  # dcmqi makes up a slice spacing for a single frame
        assert np.allclose(image.directions[2], affine[:3, 2], atol=1e-3)


def test_seg_reads_back_with_dcmqi_on_the_source_grid(built: Built, tmp_path: Path) -> None:
    (merged,) = segimage2itkimage(built.paths["seg"][0], tmp_path / "seg")
    image = read_nrrd(merged)
    _check_grid(image, built.volume)
    assert np.array_equal(image.array.reshape(built.volume.shape), built.prediction.label_map)
    # FRACTIONAL: one file per segment holding the stored 0..255 probabilities.
    files = segimage2itkimage(built.paths["fractional_seg"][0], tmp_path / "frac", merge=False)
    probabilities = np.asarray(built.prediction.probabilities)
    assert len(files) == len(probabilities)
    for path, expected in zip(files, probabilities, strict=True):
        image = read_nrrd(path)
        _check_grid(image, built.volume)
        stored = image.array.reshape(built.volume.shape).astype(np.float64)
        assert np.abs(stored - expected * 255.0).max() <= 1.0, path.name


def _groups(sr: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def test_sr_reads_back_with_highdicom(built: Built) -> None:
    template, analysis = built.template, built.analysis
    for tag in ("sr", "sr.fractional_seg"):
        sr = hd.sr.srread(built.paths[tag][0])
        seg_tag = tag.partition(".")[2] or "seg"
        seg = pydicom.dcmread(built.paths[seg_tag][0], stop_before_pixels=True)
        report = _groups(sr)
        volumetric = report.get_volumetric_roi_measurement_groups()
        assert len(volumetric) == len(template.segments)
        tracking = {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence}
        for number, (group, segment) in enumerate(
            zip(volumetric, template.segments, strict=True), start=1
        ):
            reference = group.referenced_segment
            assert reference is not None
            assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
            assert group.tracking_uid == tracking[number]
            written = {
                (m.name.value, m.derivation.value if m.derivation else None): m.value
                for m in group.get_measurements()
            }
            expected = {
                (
                    template.measurement(key).concept.value,
                    spec.value if (spec := template.measurement(key).derivation_concept) else None,
                ): value
                for key, value in analysis.measurements[segment.label_value].items()
            }
            assert written == pytest.approx(expected, rel=1e-6)
            evaluations = {
                (e.name.value, e.value.value)
                for e in group.get_qualitative_evaluations()
                if e.name.value != FINDING_CATEGORY
            }
            assert evaluations == {
                (f.spec.concept.value, f.value.value)
                for f in analysis.findings[segment.label_value]
            }
        planar = report.get_planar_roi_measurement_groups()
        assert len(planar) == len(analysis.largest_slices)
        for group in planar:
            label = next(
                s.label_value
                for s in template.segments
                if str(group.tracking_identifier).startswith(s.tracking_id)
            )
            number = template.segment_number(label)
            assert group.tracking_uid == tracking[number]
            region = group.roi
            assert region is not None
            slice_index = analysis.largest_slices[label]
            expected_polygon = analysis.outlines(label, slice_index)[0]
            assert np.allclose(region.value, expected_polygon)
            image = region.ContentSequence[0].ReferencedSOPSequence[0]
            assert image.ReferencedSOPInstanceUID == built.volume.sop_instance_uids[slice_index]


def test_gsps_outlines_every_slice_with_a_finding(built: Built) -> None:
    gsps = pydicom.dcmread(built.paths["gsps"][0])
    analysis = built.analysis
    annotated: dict[str, set[str]] = {}
    for annotation in gsps.GraphicAnnotationSequence:
        (image,) = annotation.ReferencedImageSequence
        for graphic in annotation.GraphicObjectSequence:
            annotated.setdefault(str(image.ReferencedSOPInstanceUID), set()).add(
                str(graphic.TrackingUID)
            )
        assert len(annotation.TextObjectSequence) == 1
    uids = built.volume.sop_instance_uids
    tracking = _tracking(built)
    expected = {
        uids[i]: {tracking[label] for label in analysis.labels_on(i)}
        for i in analysis.slices_with_findings
    }
    assert annotated == expected
    layers = {str(layer.GraphicLayer) for layer in gsps.GraphicLayerSequence}
    assert layers == {str(a.GraphicLayer) for a in gsps.GraphicAnnotationSequence}


def _tracking(built: Built) -> dict[int, str]:
    """``{label value: Tracking UID}`` as the BINARY SEG has them."""
    seg = pydicom.dcmread(built.paths["seg"][0], stop_before_pixels=True)
    numbers = {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence}
    return {s.label_value: numbers[n] for n, s in enumerate(built.template.segments, start=1)}


def test_sc_images_carry_the_burned_in_overlay(built: Built) -> None:
    analysis = built.analysis
    images = sorted(
        (pydicom.dcmread(p) for p in built.files(ResultKind.SC)), key=lambda d: d.InstanceNumber
    )
    for image, slice_index in zip(images, analysis.slices_with_findings, strict=True):
        assert image.BurnedInAnnotation == "YES"
        assert "NOT FOR DIAGNOSTIC USE" in image.SeriesDescription
        assert image.PhotometricInterpretation == "RGB"
        source_uid = built.volume.sop_instance_uids[slice_index]
        assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == source_uid
        from node.results.sc.overlay import _window

        window = _window(built.volume.array, built.volume.datasets[0])
        assert np.array_equal(image.pixel_array, render_slice(analysis, slice_index, window))
        # The segment colours are in the image.
        for label in analysis.labels_on(slice_index):
            colour = built.template.segment(label).colour
            assert (image.pixel_array == colour).all(axis=-1).any()


def test_sc_blends_the_segment_colour_over_the_grey_slice(built: Built) -> None:
    """Checked from the rule, not from the renderer: grey (R = G = B, the windowed value)
    outside the segments, the colour blended at FILL_ALPHA inside them, the outline in the
    segment's colour, a legend swatch per segment and the yellow banner at the bottom."""
    from node.results.sc.overlay import FILL_ALPHA, _window

    analysis = built.analysis
    lower, upper = _window(built.volume.array, built.volume.datasets[0])
    images = sorted(
        (pydicom.dcmread(p) for p in built.files(ResultKind.SC)), key=lambda d: d.InstanceNumber
    )
    for image, slice_index in zip(images, analysis.slices_with_findings, strict=True):
        pixels = image.pixel_array.astype(np.float64)
        values = built.volume.array[slice_index]
        grey = np.clip((values - lower) / (upper - lower), 0.0, 1.0) * 255.0
        labels = analysis.labels_on(slice_index)
        # Text: the legend (one line per segment) at the top, the banner at the bottom.
        text = np.zeros(grey.shape, dtype=bool)
        text[: 4 + 16 * len(labels)] = True
        text[-16:] = True
        numbers = analysis.segment_numbers[slice_index]
        outside = (numbers == 0) & ~text
        assert outside.any()
        assert np.abs(pixels[outside] - grey[outside][:, None]).max() <= 0.5
        for label in labels:
            colour = np.asarray(built.template.segment(label).colour, dtype=np.float64)
            mask = numbers == built.template.segment_number(label)
            inner = ndimage.binary_erosion(mask) & ~text
            blended = (1.0 - FILL_ALPHA) * grey[inner][:, None] + FILL_ALPHA * colour
            assert np.abs(pixels[inner] - blended).max(initial=0.0) <= 0.5
            edge = mask & ~ndimage.binary_erosion(mask) & ~text
            assert (pixels[edge] == colour).all()
            legend = image.pixel_array[: 4 + 16 * len(labels), :16]
            assert (legend == colour).all(axis=-1).sum() >= 25, label  # a filled swatch
        # Anti-aliased yellow text over grey: red and green well above blue.
        red, green, blue = (pixels[-16:, :, channel] for channel in range(3))
        assert ((red - blue > 100) & (green - blue > 100)).any()


def test_ko_lists_every_other_object_of_its_profile(built: Built) -> None:
    (tag,) = [t for t in built.paths if t.startswith("ko.")]
    ko = hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(built.paths[tag][0]))
    listed = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in ko.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }
    expected = {
        str(d.SOPInstanceUID) for t in tag.partition(".")[2].split("+") for d in built.objects[t]
    }
    assert listed == expected
    assert ko.ConceptNameCodeSequence[0].CodeValue == "113030"


# -- kinds from other routines: maps, derived images, radiomics, classifier/detector ----
#
# The same four sources also get the objects a segmentation does not give: a Parametric
# Map and heat-map SC of an attribution, a derived series of the source's IOD (CT Image
# Storage from CT, MR Image Storage from MR) and its Secondary Capture, an SR with
# pyradiomics features (first order + shape), and the SR, GSPS, SC and KO of a
# classifier/detector (tests/data/templates/cad_findings.yaml).

CAD_TAGS = ("sr", "gsps", "sc", "ko.gsps+sc+sr")


@dataclass(frozen=True)
class Routines:
    name: str
    source_paths: list[Path]
    #: ``"<routine>/<tag>"`` -> files.
    paths: dict[str, list[Path]]


def _with_radiomics(template: ResultTemplate, directory: Path) -> ResultTemplate:
    """The source's template with first order + shape radiomics on every segment."""
    import yaml

    if template.name == "ct_lungs":
        from node.contract.template import default_template_dir

        path = default_template_dir() / "ct_lungs.yaml"
    else:
        path = TEMPLATES / f"{template.name}.yaml"
    document = yaml.safe_load(path.read_text())
    for segment in document["segments"]:
        segment["radiomics"] = ["firstorder", "shape"]
    directory.mkdir(parents=True, exist_ok=True)
    written = directory / f"{template.name}.yaml"
    written.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_template(written)


def _attribution(volume: Volume, template: ResultTemplate) -> Attribution:
    """The source intensities scaled to 0-1, said to explain the template's first segment."""
    values = volume.array.astype(np.float64)
    span = float(values.max() - values.min()) or 1.0
    segment = template.segments[0]
    return Attribution(
        ((values - values.min()) / span).astype(np.float32),
        method="test saliency",
        target=segment.label,
        label_value=segment.label_value,
    )


def _cad_prediction(volume: Volume) -> Prediction:
    """A series and a per-image classification, a box and a point detection."""
    _, rows, columns = volume.shape
    middle = volume.shape[0] // 2
    box = (columns * 0.25, rows * 0.25, columns * 0.5, rows * 0.5)
    return Prediction(
        classifications=[
            Classification("nodule_present", 0.8125),
            Classification("image_abnormal", 0.75, frame=middle),
        ],
        detections=[
            Detection("nodule", 0.9375, middle, box=box),
            Detection("calcification", 0.5, 0, point=(columns * 0.5, rows * 0.5)),
        ],
    )


@pytest.fixture(scope="module")
def routines(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Routines:
    pytest.importorskip("radiomics", reason="pyradiomics is installed by make run / make test")
    directory = tmp_path_factory.mktemp(f"{built.name}-routines")
    volume = built.volume
    derived = DerivedImage(volume.array * 0.5 + 10.0, "Test filter")
    labels = np.asarray(built.prediction.label_map)
    runs = {
        "maps": build_results(
            volume,
            Prediction(attribution=_attribution(volume, built.template)),
            built.template,
            tags=["pmap", "heatmap_sc"],
        ),
        "derived": build_results(
            volume,
            Prediction(derived_image=derived),
            load_template_by_name("ct_denoise"),
            tags=["derived", "derived_sc"],
        ),
        "radiomics": build_results(
            volume,
            Prediction(label_map=labels),
            _with_radiomics(built.template, directory / "template"),
            tags=["seg", "sr"],
        ),
        "cad": build_results(
            volume,
            _cad_prediction(volume),
            load_template(TEMPLATES / "cad_findings.yaml"),
            tags=CAD_TAGS,
        ),
    }
    assert runs["radiomics"].radiomics is not None
    assert runs["radiomics"].radiomics.features
    paths: dict[str, list[Path]] = {}
    for routine, results in runs.items():
        out = directory / routine
        out.mkdir()
        for tag, dataset in results.tagged():
            path = out / file_name(tag, str(dataset.SOPInstanceUID))
            path.write_bytes(_node_file(dataset))
            paths.setdefault(f"{routine}/{tag}", []).append(path)
    return Routines(built.name, built.source_paths, paths)


def test_routines_build_every_kind(routines: Routines) -> None:
    assert sorted(routines.paths) == sorted(
        [
            "maps/pmap",
            "maps/heatmap_sc",
            "derived/derived",
            "derived/derived_sc",
            "radiomics/seg",
            "radiomics/sr",
            *(f"cad/{tag}" for tag in CAD_TAGS),
        ]
    )
    assert len(routines.paths["derived/derived"]) == len(routines.source_paths)
    assert len(routines.paths["derived/derived_sc"]) == len(routines.source_paths)


def test_derived_images_keep_the_source_iod_and_the_values(
    built: Built, routines: Routines
) -> None:
    """Same SOP class as the source (MR Image Storage has no Rescale Slope/Intercept, so an
    MR derived image stores the values themselves) and the values back within rounding."""
    expected = built.volume.array * 0.5 + 10.0
    uids = list(built.volume.sop_instance_uids)
    for path in routines.paths["derived/derived"]:
        image = pydicom.dcmread(path)
        index = uids.index(image.SourceImageSequence[0].ReferencedSOPInstanceUID)
        source = built.volume.datasets[index]
        assert image.SOPClassUID == source.SOPClassUID
        if source.Modality == "MR":
            assert "RescaleSlope" not in image and "RescaleIntercept" not in image
        slope = float(image.get("RescaleSlope", 1.0))
        real = image.pixel_array * slope + float(image.get("RescaleIntercept", 0.0))
        np.testing.assert_allclose(real, expected[index], atol=0.5 * slope + 1e-6)


def test_routine_objects_pass_dciodvfy(routines: Routines) -> None:
    for tag, paths in routines.paths.items():
        # Images of one series are built alike: the first, middle and last are checked
        # (dcentvfy below reads them all).
        for path in sorted({paths[0], paths[len(paths) // 2], paths[-1]}):
            assert_dciodvfy_clean(path, f"{routines.name} {tag}")
    (sr,) = routines.paths["radiomics/sr"]
    schemes = pydicom.dcmread(sr).CodingSchemeIdentificationSequence
    assert "99AINODE" in {str(item.CodingSchemeDesignator) for item in schemes}


def test_dcentvfy_finds_no_errors_across_source_and_routine_objects(
    built: Built, routines: Routines
) -> None:
    every = [p for paths in routines.paths.values() for p in paths]
    segmentation = [p for paths in built.paths.values() for p in paths]
    report = dcentvfy_output([*routines.source_paths, *segmentation, *every])
    errors = [line for line in report if line.startswith("Error")]
    assert errors == [], errors[:5]
    others = [
        line
        for line in report
        if line.startswith("Warning") and "<AccessionNumber> IE <Series> versus <Study>" not in line
    ]
    assert others == [], others[:5]
