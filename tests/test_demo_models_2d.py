"""The 2-D demonstration routines: synthetic generators, shipped weights, plugins, results.

* the fundus and mammogram pixel generators are deterministic and their truth is what
  the pixels show; their DICOM wrappers pass dciodvfy;
* the shipped weights reproduce the held-out numbers their READMEs give (on the first
  images of the held-out sets, which the READMEs list separately);
* both plugins run through the node's path (assemble the series, check what they
  accept, run, build the result objects) and the results pass dciodvfy;
* end to end (slow): a real Orthanc pushes an OP photograph and a four-view MG series to
  the node with the built-in demo rules and gets the SR, GSPS and SC results back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from node.config import (
    BUILT_IN_FUNDUS_DEMO_RULE,
    BUILT_IN_MAMMO_DEMO_RULE,
    DEFAULT_CONFIG,
    settings_from_mapping,
)
from node.contract.assemble import assemble_volume
from node.contract.plugin import Classification, Detection, Prediction, RunContext, check_input
from node.contract.volume import Volume
from node.errors import InputRejected
from node.orchestration.registry import PluginRegistry
from node.results import load_template_by_name
from node.results.build import build_results
from node.routing import HeaderSubject, matching_rules
from plugins.mg_mass_detector import MgMassDetectorPlugin
from plugins.mg_mass_detector import model as mg_model
from plugins.op_fundus_classifier import OpFundusClassifierPlugin
from plugins.op_fundus_classifier import model as op_model
from tests.support.pacs import orthanc_and_node_process
from tests.support.validators import dciodvfy_errors
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import (
    find_series,
    instance_dataset,
    lookup_study,
    send_to_modality,
    upload_many,
    wait_for_series,
)
from tools.synthetic.fundus import make_fundus
from tools.synthetic.fundus_pixels import DR_LESIONS, make_fundus_pixels
from tools.synthetic.mammogram import SCREENING_VIEWS, make_mammogram, make_screening_series
from tools.synthetic.mammogram_pixels import make_mammogram_pixels
from tools.synthetic.projection import SeriesIdentity, mg_image, op_image
from tools.training import mg_mass_detector as mg_train
from tools.training import op_fundus_classifier as op_train

CPU = torch.device("cpu")

#: What README.md of each plugin reports for the first held-out images ("test subset").
FUNDUS_SUBSET = {"auc": 0.652, "sensitivity": 0.667, "specificity": 0.400}
MASS_SUBSET = {"froc": 0.613, "sensitivity": 0.500, "fp_per_image": 0.250}
#: Tolerance: the same computation on another CPU/BLAS differs in the last digits only.
TOLERANCE = 0.03


# -- generators ----------------------------------------------------------------------------


def test_fundus_generator_is_deterministic_and_seeded() -> None:
    first, truth = make_fundus_pixels(7, 128)
    again, truth_again = make_fundus_pixels(7, 128)
    other, _ = make_fundus_pixels(8, 128)
    assert first.dtype == np.uint8 and first.shape == (128, 128, 3)
    assert np.array_equal(first, again) and truth == truth_again
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("severity", ["none", "subtle", "mild", "moderate", "severe"])
def test_fundus_truth_is_what_the_pixels_show(severity: str) -> None:
    image, truth = make_fundus_pixels(3, 256, severity=severity, laterality="R")  # type: ignore[arg-type]
    assert truth.severity == severity
    assert truth.lesions_present == (severity != "none")
    assert truth.lesions_present == any(lesion.kind in DR_LESIONS for lesion in truth.lesions)
    # A right eye's optic disc lies nasal (image right) of the fovea, and is the brightest part.
    assert truth.disc_centre[0] > truth.fovea_centre[0]
    disc = image[int(truth.disc_centre[1]), int(truth.disc_centre[0])].astype(int)
    assert disc.sum() > np.percentile(image.sum(axis=2), 99)
    green = image[..., 1].astype(float)
    for lesion in truth.lesions:
        if lesion.kind not in ("microaneurysm", "haemorrhage"):
            continue
        r, c = int(lesion.y), int(lesion.x)
        ring = green[max(r - 8, 0) : r + 9, max(c - 8, 0) : c + 9]
        assert green[r, c] < np.median(ring), (lesion, green[r, c], np.median(ring))


def test_fundus_left_eye_is_the_mirrored_right_eye() -> None:
    right, truth_r = make_fundus_pixels(5, 128, laterality="R")
    left, truth_l = make_fundus_pixels(5, 128, laterality="L")
    assert np.array_equal(left, right[:, ::-1])
    assert truth_l.disc_centre == pytest.approx(
        (128 - truth_r.disc_centre[0], truth_r.disc_centre[1])
    )
    assert truth_l.disc_centre[0] < truth_l.fovea_centre[0]


def test_fundus_generator_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="laterality"):
        make_fundus_pixels(0, 128, laterality="OD")
    with pytest.raises(ValueError, match="severity"):
        make_fundus_pixels(0, 128, severity="proliferative")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="below 64"):
        make_fundus_pixels(0, 32)


def test_mammogram_generator_is_deterministic_with_laterality_and_view() -> None:
    first, truth = make_mammogram_pixels(4, 240, 192, 1.0, laterality="L", view="MLO", masses=1)
    again, truth_again = make_mammogram_pixels(
        4, 240, 192, 1.0, laterality="L", view="MLO", masses=1
    )
    assert first.dtype == np.uint16 and first.max() <= 4095
    assert np.array_equal(first, again) and truth.masses == truth_again.masses
    assert truth.patient_orientation == ("A", "FR")
    # Chest wall at column 0 for a left breast (the mirrored side for a right one).
    assert truth.breast_mask[:, 0].mean() > 0.6 and truth.breast_mask[:, -1].mean() < 0.2
    right, truth_r = make_mammogram_pixels(4, 240, 192, 1.0, laterality="R", view="MLO", masses=1)
    assert np.array_equal(right, first[:, ::-1])
    (mass_l,), (mass_r,) = truth.masses, truth_r.masses
    assert mass_r.box == pytest.approx(
        (192 - mass_l.box[2], mass_l.box[1], 192 - mass_l.box[0], mass_l.box[3])
    )
    # MLO: the pectoral muscle, bright like dense tissue, fills the upper chest-wall corner.
    corner = first[:20, :10].mean()
    assert corner > np.percentile(first[truth.breast_mask], 75)
    cc, _ = make_mammogram_pixels(4, 240, 192, 1.0, laterality="L", view="CC", masses=1)
    assert cc[:20, :10].mean() < corner


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mammogram_masses_are_where_their_boxes_say(seed: int) -> None:
    with_mass, truth = make_mammogram_pixels(seed, 240, 192, 1.0, masses=2)
    without, truth_none = make_mammogram_pixels(seed, 240, 192, 1.0, masses=0)
    assert len(truth.masses) == 2 and truth_none.masses == ()
    difference = with_mass.astype(float) - without.astype(float)
    outside = np.ones(difference.shape, bool)
    for mass in truth.masses:
        x0, y0, x1, y1 = mass.box
        assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 240
        assert truth.breast_mask[int((y0 + y1) / 2), int((x0 + x1) / 2)]
        assert 4.0 <= max(mass.semi_axes_mm) <= 15.0
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        w, h = (x1 - x0) / 4, (y1 - y0) / 4
        core = difference[int(cy - h) : int(cy + h) + 1, int(cx - w) : int(cx + w) + 1]
        assert core.mean() > 0.5 * mass.contrast * 4095
        outside[max(int(y0) - 30, 0) : int(y1) + 30, max(int(x0) - 30, 0) : int(x1) + 30] = False
    # Elsewhere only the detector noise differs (its level and draw are per image).
    assert np.abs(difference[outside]).mean() < 0.3 * min(m.contrast for m in truth.masses) * 4095


def test_mammogram_generator_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="view"):
        make_mammogram_pixels(0, view="ML")
    with pytest.raises(ValueError, match="masses"):
        make_mammogram_pixels(0, masses=5)
    with pytest.raises(ValueError, match="laterality"):
        make_mammogram_pixels(0, laterality="B")


def test_dicom_wrappers_pass_dciodvfy(tmp_path: Path) -> None:
    op, _ = make_fundus(11, 256, severity="mild", laterality="L")
    assert (op.Modality, op.ImageLaterality, op.PhotometricInterpretation) == ("OP", "L", "RGB")
    assert np.array_equal(
        op.pixel_array, make_fundus_pixels(11, 256, severity="mild", laterality="L")[0]
    )
    assert (
        make_fundus(11, 256, severity="mild", laterality="L")[0].SOPInstanceUID == op.SOPInstanceUID
    )
    series = make_screening_series(2)
    assert [(ds.ImageLaterality, ds.ViewPosition) for ds, _ in series] == list(SCREENING_VIEWS)
    assert len({ds.SeriesInstanceUID for ds, _ in series}) == 1
    for ds, mg_truth in series:
        assert list(ds.PatientOrientation) == list(mg_truth.patient_orientation)
        assert ds.PresentationIntentType == "FOR PRESENTATION"
    for index, ds in enumerate([op, *(ds for ds, _ in series)]):
        path = tmp_path / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], (ds.Modality, index)


def test_built_in_rules_route_op_and_mg_for_presentation_to_the_demo_models() -> None:
    settings = settings_from_mapping(DEFAULT_CONFIG, environ={})
    fundus, _ = make_fundus(1, 128)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4000, (128, 128)).astype(np.uint16)
    presentation = mg_image(pixels, laterality="R", view="MLO", imager_pixel_spacing_mm=0.5)
    processing = mg_image(
        pixels, laterality="R", view="MLO", imager_pixel_spacing_mm=0.5, intent="FOR PROCESSING"
    )

    def plugins(ds: Dataset) -> list[str]:
        return [rule.plugin for rule in matching_rules(settings.rules, HeaderSubject(ds))]

    assert plugins(fundus) == ["op_fundus_classifier"]
    assert plugins(presentation) == ["mg_mass_detector"]
    assert plugins(processing) == []


# -- shipped weights -------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [op_model.WEIGHTS, mg_model.WEIGHTS])
def test_weights_ship_small_and_load(weights: Path) -> None:
    assert weights.is_file() and weights.stat().st_size < 2 * 2**20
    build = op_model.build_network if weights == op_model.WEIGHTS else mg_model.build_network
    build().load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))


def test_thresholds_agree_with_the_templates() -> None:
    fundus = load_template_by_name("op_fundus_classifier")
    mass = load_template_by_name("mg_mass_detector")
    assert fundus.classifications[0].key == op_model.FINDING
    assert fundus.classifications[0].threshold == pytest.approx(op_model.THRESHOLD)
    assert mass.detections[0].key == mg_model.FINDING
    assert mass.detections[0].report_threshold == pytest.approx(mg_model.SCORE_THRESHOLD)


def _loaded(network: torch.nn.Module, weights: Path) -> torch.nn.Module:
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()


def test_fundus_classifier_reproduces_its_readme_numbers() -> None:
    torch.set_num_threads(1)
    network = _loaded(op_model.build_network(), op_model.WEIGHTS)
    scores = op_train.evaluate_set(
        network, op_train.HELD_OUT_SEED, op_train.TEST_SUBSET, op_train.HELD_OUT_SIZE
    )
    result = op_train.metrics(scores, op_model.THRESHOLD)
    assert result.auc == pytest.approx(FUNDUS_SUBSET["auc"], abs=TOLERANCE)
    assert result.sensitivity == pytest.approx(FUNDUS_SUBSET["sensitivity"], abs=TOLERANCE)
    assert result.specificity == pytest.approx(FUNDUS_SUBSET["specificity"], abs=TOLERANCE)


def test_mass_detector_reproduces_its_readme_numbers() -> None:
    torch.set_num_threads(1)
    network = _loaded(mg_model.build_network(), mg_model.WEIGHTS)
    tally = mg_train.merge(
        mg_train.evaluate_set(network, mg_train.HELD_OUT_SEED, mg_train.TEST_SUBSET)
    )
    froc, _ = tally.froc()
    sensitivity, fp_rate = tally.at(mg_model.SCORE_THRESHOLD)
    assert froc == pytest.approx(MASS_SUBSET["froc"], abs=TOLERANCE)
    assert sensitivity == pytest.approx(MASS_SUBSET["sensitivity"], abs=TOLERANCE)
    assert fp_rate == pytest.approx(MASS_SUBSET["fp_per_image"], abs=TOLERANCE)


# -- plugins through the node's path ---------------------------------------------------------


def _volume(datasets: list[Dataset], directory: Path) -> Volume:
    """Write and re-read the instances (as the node does), then assemble them."""
    directory.mkdir(parents=True, exist_ok=True)
    read = []
    for index, ds in enumerate(datasets):
        path = directory / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        read.append(pydicom.dcmread(path))
    return assemble_volume(read)


def _assert_results_pass_dciodvfy(
    volume: Volume, prediction: Prediction, template_name: str, directory: Path
) -> None:
    """Build the SR, GSPS and SC of ``prediction`` with the routine's template; each passes."""
    template = load_template_by_name(template_name)
    results = build_results(volume, prediction, template, tags=["sr", "gsps", "sc"])
    for index, ds in enumerate(results.datasets):
        path = directory / f"result{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], (ds.Modality, ds.SOPClassUID)


def test_plugins_are_discovered_and_load() -> None:
    registry = PluginRegistry.discover()
    for name in ("op_fundus_classifier", "mg_mass_detector"):
        assert name not in registry.errors
        assert registry.get(name, CPU) is not None


def test_fundus_plugin_classifies_each_photograph(tmp_path: Path) -> None:
    identity = SeriesIdentity(patient_name="PHANTOM^FUNDUS", patient_id="PHANTOMOP1")
    severe, _ = make_fundus(21, severity="severe", laterality="R", identity=identity)
    normal, _ = make_fundus(
        22, severity="none", laterality="L", identity=identity, instance_number=2
    )
    volume = _volume([severe, normal], tmp_path / "op")
    plugin = OpFundusClassifierPlugin()
    plugin.load(CPU)
    check_input(plugin, volume)
    prediction = plugin.run(volume, RunContext(1, "test", CPU))
    assert [c.frame for c in prediction.classifications] == [0, 1]
    assert all(
        isinstance(c, Classification) and c.finding == "dr_lesions"
        for c in prediction.classifications
    )
    sick, healthy = (c.probability for c in prediction.classifications)
    assert sick >= op_model.THRESHOLD and sick > healthy + 0.2
    _assert_results_pass_dciodvfy(volume, prediction, "op_fundus_classifier", tmp_path)


def test_mass_plugin_finds_an_obvious_mass_in_the_right_place(tmp_path: Path) -> None:
    identity = SeriesIdentity(
        patient_name="PHANTOM^MAMMO", patient_id="PHANTOMMG1", patient_sex="F"
    )
    views = [
        make_mammogram(
            seed, laterality=side, view=view, masses=masses, identity=identity, instance_number=n
        )
        for n, (seed, side, view, masses) in enumerate(
            [(31, "R", "CC", 1), (32, "L", "CC", 0), (33, "R", "MLO", 1), (34, "L", "MLO", 0)],
            start=1,
        )
    ]
    volume = _volume([ds for ds, _ in views], tmp_path / "mg")
    plugin = MgMassDetectorPlugin()
    plugin.load(CPU)
    check_input(plugin, volume)
    prediction = plugin.run(volume, RunContext(2, "test", CPU))
    assert all(isinstance(d, Detection) and d.box is not None for d in prediction.detections)
    assert all(d.score >= mg_model.SCORE_THRESHOLD for d in prediction.detections)
    hits = 0
    for frame, (_, truth) in enumerate(views):
        assert volume.lateralities[frame] == truth.laterality
        for mass in truth.masses:
            x0, y0, x1, y1 = mass.box
            hits += any(
                d.frame == frame
                and x0 <= (d.box[0] + d.box[2]) / 2 <= x1  # type: ignore[index]
                and y0 <= (d.box[1] + d.box[3]) / 2 <= y1  # type: ignore[index]
                for d in prediction.detections
            )
    assert hits >= 1
    _assert_results_pass_dciodvfy(volume, prediction, "mg_mass_detector", tmp_path)


def test_plugins_refuse_what_they_were_not_trained_on(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    processing = mg_image(
        rng.integers(0, 4000, (256, 200)).astype(np.uint16),
        laterality="L",
        view="CC",
        imager_pixel_spacing_mm=0.5,
        intent="FOR PROCESSING",
    )
    with pytest.raises(InputRejected, match="SOP class"):
        check_input(MgMassDetectorPlugin(), _volume([processing], tmp_path / "proc"))
    lateral = mg_image(
        rng.integers(0, 4000, (256, 200)).astype(np.uint16),
        laterality="L",
        view="ML",
        imager_pixel_spacing_mm=0.5,
    )
    with pytest.raises(InputRejected, match="view"):
        check_input(MgMassDetectorPlugin(), _volume([lateral], tmp_path / "ml"))
    grey = op_image(rng.integers(0, 255, (256, 256)).astype(np.uint8), laterality="R")
    with pytest.raises(InputRejected):
        check_input(OpFundusClassifierPlugin(), _volume([grey], tmp_path / "grey"))


# -- end to end into Orthanc -----------------------------------------------------------------


@pytest.fixture
def pacs_and_node(tmp_path: Path) -> Iterator[tuple[OrthancServer, NodeProcess]]:
    rules = [BUILT_IN_FUNDUS_DEMO_RULE, BUILT_IN_MAMMO_DEMO_RULE]
    with orthanc_and_node_process(tmp_path, rules, results=["sr", "gsps", "sc"]) as (pacs, node):
        yield pacs, node


PRESENT = ("52101004", "SCT")


def _report(sr: Dataset, path: Path) -> hd.sr.MeasurementReport:
    sr.save_as(path)
    return hd.sr.srread(path).content  # type: ignore[no-any-return]


def _results_in_pacs(pacs: OrthancServer, study_uid: str, directory: Path) -> dict[str, Dataset]:
    """The SR, presentation state and capture of one study; every result object passes dciodvfy.

    The three are sent one after another, so wait for all of them (the capture, modality OT,
    arrives last) and for each series to be stable before reading any.
    """
    wait_for_series(pacs.client, study_uid, ["SR", "PR", "OT"], timeout=300, stable=True)
    found: dict[str, Dataset] = {}
    for series in find_series(pacs.client, study_uid):
        modality = series["MainDicomTags"].get("Modality", "")
        description = series["MainDicomTags"].get("SeriesDescription", "")
        if modality not in ("SR", "PR") and "AI" not in description:
            continue  # a source series
        for instance in series["Instances"]:
            ds = instance_dataset(pacs.client, instance)
            path = directory / f"{modality}-{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            assert dciodvfy_errors(path) == [], (modality, description)
            found.setdefault(modality if modality in ("SR", "PR") else "SC", ds)
    return found


@pytest.mark.slow
def test_orthanc_gets_fundus_and_mammogram_results_back(
    pacs_and_node: tuple[OrthancServer, NodeProcess], tmp_path: Path
) -> None:
    pacs, _ = pacs_and_node
    fundus, fundus_truth = make_fundus(41, severity="severe", laterality="R")
    # Masses of contrast 0.3 on the right views (the detector finds about half of all masses;
    # these obvious ones it finds, see mg_mass_detector/README.md).
    series = make_screening_series(15, masses=(1, 0, 1, 0))
    files = []
    for index, ds in enumerate([fundus, *(ds for ds, _ in series)]):
        path = tmp_path / f"in{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    upload_many(pacs.client, files)
    fundus_study = str(fundus.StudyInstanceUID)
    mammo_study = str(series[0][0].StudyInstanceUID)
    for study_uid in (fundus_study, mammo_study):
        send_to_modality(pacs.client, "ainode", [lookup_study(pacs.client, study_uid)])

    op_results = _results_in_pacs(pacs, fundus_study, tmp_path)
    assert {"SR", "PR", "SC"} <= set(op_results)
    assert op_results["PR"].SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.2"  # colour PS on RGB
    report = _report(op_results["SR"], tmp_path / "op-sr.dcm")
    (group,) = report.get_image_measurement_groups()
    (source,) = group.source_images
    assert source.referenced_sop_instance_uid == fundus.SOPInstanceUID
    (evaluation,) = group.get_qualitative_evaluations()
    assert (str(evaluation.value.value), str(evaluation.value.scheme_designator)) == PRESENT
    assert fundus_truth.lesions_present

    mg_results = _results_in_pacs(pacs, mammo_study, tmp_path)
    assert {"SR", "PR", "SC"} <= set(mg_results)
    report = _report(mg_results["SR"], tmp_path / "mg-sr.dcm")
    groups = report.get_planar_roi_measurement_groups()
    assert groups, "no mass reported"
    truth_by_uid = {str(ds.SOPInstanceUID): truth for ds, truth in series}
    hits = 0
    for planar in groups:
        (image,) = planar.roi.ContentSequence
        uid = str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        cx, cy = np.asarray(planar.roi.value, dtype=np.float64)[:4].mean(axis=0)
        hits += any(
            m.box[0] <= cx <= m.box[2] and m.box[1] <= cy <= m.box[3]
            for m in truth_by_uid[uid].masses
        )
    assert hits >= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_2d_models_give_the_cpu_results_on_cuda(tmp_path: Path) -> None:
    gpu = torch.device("cuda:0")
    severe, _ = make_fundus(21, severity="severe", laterality="R")
    fundus = _volume([severe], tmp_path / "op")
    mammogram, _ = make_mammogram(31, laterality="R", view="CC", masses=1)
    mammo = _volume([mammogram], tmp_path / "mg")
    for plugin_type, volume in ((OpFundusClassifierPlugin, fundus), (MgMassDetectorPlugin, mammo)):
        results = []
        for device in (CPU, gpu):
            plugin = plugin_type()
            plugin.load(device)
            results.append(plugin.run(volume, RunContext(3, "test", device)))
            plugin.unload()
        cpu, cuda = results
        assert [c.probability for c in cuda.classifications] == pytest.approx(
            [c.probability for c in cpu.classifications], abs=1e-3
        )
        assert len(cuda.detections) == len(cpu.detections)
        for ours, theirs in zip(cuda.detections, cpu.detections, strict=True):
            assert ours.frame == theirs.frame
            assert ours.score == pytest.approx(theirs.score, abs=1e-3)
            assert ours.box == pytest.approx(theirs.box, abs=1.0)
