"""``ainode evaluate`` on datasets with known answers.

* segmentation: chest phantoms with their analytic lungs as reference SEGs, scored
  with the shipped ct_lungs routine (Dice near 1), then with the reference moved by
  3 columns (9 mm): Dice falls to the overlap of an ellipsoid with its shifted copy
  and HD95 rises to the shift;
* classification: single-image cases whose pixel value is the probability a small
  classifier reads off, labels chosen so AUC, sensitivity and specificity are known;
* detection: images with bright squares a small detector boxes, reference boxes
  chosen so the FROC points are known;
* the HTML report in Debian's chromium (Playwright); the stored results of a rule
  (run by the real job worker) compared with the evaluation.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import jsonschema
import numpy as np
import pydicom
import pytest
import torch
from scipy import ndimage

from node.cli.main import main
from node.config import QualitySettings
from node.contract.assemble import assemble_volume
from node.contract.plugin import (
    Accepts,
    Classification,
    Detection,
    InferencePlugin,
    Prediction,
    RunContext,
    ValidatedInput,
)
from node.contract.template import load_template_by_name
from node.contract.volume import Volume
from node.evaluation import (
    DatasetError,
    EvaluationDataset,
    EvaluationError,
    EvaluationOptions,
    write_report,
)
from node.evaluation.classification import score_finding
from node.evaluation.detection import PredictedMark, ReferenceBox, froc, hits
from node.evaluation.evaluate import SCHEMA_PATH
from node.evaluation.evaluate import evaluate as run_evaluation
from node.evaluation.segmentation import score_segment
from node.evaluation.shadow import ShadowSource
from node.evaluation.stats import wilson
from node.orchestration.registry import PluginRegistry
from node.orchestration.summary import prediction_json, write_summary
from node.orchestration.worker import InferenceWorker
from node.state.db import Database
from node.state.jobs import JobQueue
from node.state.series import InstanceRecord, SeriesStore
from tests.support.browser import browser_page, needs_chromium
from tools.evaluation_example import reference_seg, shift_columns, write_lung_dataset
from tools.synthetic.chest_ct import make_chest_ct, write_series

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def evaluate(*args, **kwargs) -> dict:
    """:func:`node.evaluation.evaluate`, its report checked (as JSON) against the schema."""
    report = run_evaluation(*args, **kwargs)
    jsonschema.validate(json.loads(json.dumps(report, allow_nan=False)), SCHEMA)
    return report


SHIFT_VOXELS = 3
PIXEL_SPACING_MM = 3.0
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "evaluate"


def ellipsoid_shift_dice(shift_mm: float, semi_axis_mm: float) -> float:
    """Dice of an ellipsoid and its copy moved by ``shift_mm`` along one semi-axis.

    Scaling that axis to the sphere case: overlap / volume = 1 - 3t/4 + t^3/16, t = d/a.
    """
    t = shift_mm / semi_axis_mm
    return 1 - 3 * t / 4 + t**3 / 16


# -- segmentation --------------------------------------------------------------------


@pytest.fixture(scope="module")
def lungs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lungs")
    write_lung_dataset(root, cases=2)
    return root


def shifted_copy(source: Path, target: Path, voxels: int, labels: Sequence[str] | None) -> Path:
    """Copy a lung dataset with each reference SEG moved by ``voxels`` columns."""
    shutil.copytree(source, target)
    template = load_template_by_name("ct_lungs")
    for seg_path in sorted(target.glob("cases/*/reference-seg.dcm")):
        images = [pydicom.dcmread(p) for p in sorted(seg_path.parent.glob("CT_*.dcm"))]
        volume = assemble_volume(images)
        seg = hd.seg.segread(seg_path)
        pixels = seg.get_pixels_by_source_instance(list(volume.sop_instance_uids))
        label_map = np.zeros(volume.shape, dtype=np.uint8)
        for channel, segment in enumerate(template.segments):
            label_map[pixels[..., channel] > 0] = segment.label_value
        moved = reference_seg(volume, shift_columns(label_map, voxels), template, labels=labels)
        moved.save_as(seg_path, enforce_file_format=True)
    return target


def store_results_with_the_job_worker(case: Path, data_dir: Path, rule: str) -> Path:
    """Run ct_lungs on ``case`` with the node's real job worker as a shadow job (results
    stored, nothing sent)."""
    database = Database(data_dir / "state.sqlite3")
    series, queue = SeriesStore(database), JobQueue(database)
    worker = InferenceWorker(
        queue,
        series,
        PluginRegistry.discover(),
        device=torch.device("cpu"),
        results_dir=data_dir / "results",
        templates_dir=None,
        clock=lambda: 1_700_000_000.0,
    )
    for path in sorted(case.glob("CT_*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        record = InstanceRecord(
            str(ds.SOPInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.StudyInstanceUID),
            str(ds.SOPClassUID),
            str(ds.file_meta.TransferSyntaxUID),
            path,
            path.stat().st_size,
            "CT",
        )
        series.record_instance(record, 1_700_000_000.0)
    queue.enqueue(
        series_uid=record.series_uid,
        study_uid=record.study_uid,
        generation=1,
        rule=rule,
        plugin="ct_lungs",
        destinations=["pacs"],
        priority=5,
        now=1_700_000_000.0,
        shadow=True,
    )
    assert worker.run_once()
    assert [job.state for job in queue.jobs()] == ["done"]
    database.close()
    return data_dir / "state.sqlite3"


@pytest.fixture(scope="module")
def shadow_database(lungs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node database where shadow rule lungs-shadow stored results for the first case."""
    first = sorted((lungs / "cases").iterdir())[0]
    return store_results_with_the_job_worker(first, tmp_path_factory.mktemp("node"), "lungs-shadow")


@pytest.fixture(scope="module")
def lung_reports(
    lungs: Path, shadow_database: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, dict]:
    """The evaluation (with the stored results of rule lungs-shadow for the first case)
    and the evaluation against references moved by SHIFT_VOXELS columns."""
    database = shadow_database
    # The shifted copy names its segments differently: matched by coded type + laterality.
    shifted = shifted_copy(
        lungs, tmp_path_factory.mktemp("shifted") / "ds", SHIFT_VOXELS, ["Lung R", "Lung L"]
    )
    return (
        evaluate("ct_lungs", lungs, shadow=ShadowSource("lungs-shadow", database)),
        evaluate("ct_lungs", shifted),
    )


def test_ct_lungs_against_phantom_truth_scores_high(lung_reports: tuple[dict, dict]) -> None:
    report, _ = lung_reports
    assert report["summary"] == {"ok": 2, "rejected": 0, "failed": 0, "cases": 2}
    assert report["plugin"]["name"] == "ct_lungs"
    assert len(report["template"]["sha256"]) == 64
    segments = {s["label"]: s for s in report["segmentation"]["segments"]}
    assert set(segments) == {"Right lung", "Left lung"}
    for segment in segments.values():
        assert segment["dice"]["n"] == 2
        assert segment["dice"]["mean"] > 0.99
        assert segment["dice"]["ci95"][0] <= segment["dice"]["mean"] <= segment["dice"]["ci95"][1]
        assert segment["hd95_mm"]["mean"] <= PIXEL_SPACING_MM  # within one voxel
    for case in report["cases"]:
        assert [s["label"] for s in case["segments"]] == ["Right lung", "Left lung"]


def test_shifted_reference_changes_dice_and_hd95_by_the_expected_amount(
    lung_reports: tuple[dict, dict],
) -> None:
    report, shifted = lung_reports
    shift_mm = SHIFT_VOXELS * PIXEL_SPACING_MM
    # Phantom lungs (128 columns at 3 mm: no in-plane scaling): semi-axes along x.
    expected = {
        "Right lung": ellipsoid_shift_dice(shift_mm, 50.0),
        "Left lung": ellipsoid_shift_dice(shift_mm, 45.0),
    }
    before = {s["label"]: s for s in report["segmentation"]["segments"]}
    after = {s["label"]: s for s in shifted["segmentation"]["segments"]}
    for label, dice in expected.items():
        assert after[label]["dice"]["mean"] == pytest.approx(dice, abs=0.01)
        assert before[label]["dice"]["mean"] - after[label]["dice"]["mean"] > 0.12
        # A convex shape moved by d: no surface point is further than d from the copy,
        # and the points where the surface faces the shift are d away.
        assert 0.8 * shift_mm <= after[label]["hd95_mm"]["mean"] <= shift_mm + 1e-6
        assert after[label]["hd95_mm"]["mean"] - before[label]["hd95_mm"]["mean"] >= 0.6 * shift_mm
    assert report["dataset"]["sha256"] != shifted["dataset"]["sha256"]


def test_sphere_shift_dice_and_hd95() -> None:
    """A voxelised sphere moved by 4 voxels: Dice and HD95 from geometry."""
    grid = np.indices((64, 64, 64)).astype(float) - 31.5
    radius, shift, spacing = 20.0, 4, (0.5, 0.5, 0.5)
    sphere = (grid**2).sum(axis=0) <= radius**2
    moved = np.roll(sphere, shift, axis=2)
    score = score_segment(sphere, moved, spacing)
    assert score.dice == pytest.approx(ellipsoid_shift_dice(shift, radius), abs=0.005)
    # Surface distance to the moved copy is d*|cos(theta)|, uniform on [0, d] over the
    # sphere (Archimedes): its 95th percentile is 0.95 d.
    assert score.hd95_mm == pytest.approx(0.95 * shift * 0.5, abs=0.5)
    same = score_segment(sphere, sphere, spacing)
    assert (same.dice, same.hd95_mm) == (1.0, 0.0)
    empty = score_segment(np.zeros_like(sphere), sphere, spacing)
    assert empty.dice == 0.0 and empty.hd95_mm is None and "empty" in (empty.note or "")


# -- classification ------------------------------------------------------------------

# (case, modality, probability, label): AUC 21/24 by counting pairs; at 0.5 TP 3, FN 1,
# FP 1, TN 5. The MR case is rejected by the routine's Accepts.
SCORES = [
    ("p1", "CT", 0.95, 1),
    ("p2", "CT", 0.85, 1),
    ("p3", "CT", 0.60, 1),
    ("p4", "CT", 0.35, 1),
    ("n1", "CT", 0.70, 0),
    ("n2", "CT", 0.45, 0),
    ("n3", "CT", 0.30, 0),
    ("n4", "CT", 0.20, 0),
    ("n5", "CT", 0.10, 0),
    ("n6", "CT", 0.05, 0),
    ("mr", "MR", 0.99, 1),
]


def single_image(directory: Path, hu: np.ndarray, seed: int, modality: str = "CT") -> Path:
    """One CT image (phantom geometry and UIDs) holding ``hu``; its file path."""
    rows, columns = hu.shape
    datasets, _ = make_chest_ct(
        n_slices=1, rows=rows, columns=columns, seed=seed, modality=modality, noise_sd_hu=0.0
    )
    ds = datasets[0]
    stored = np.clip(np.rint(hu) + 1024, 0, 4095).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    return write_series([ds], directory)[0]


class ScoreReader(InferencePlugin):
    """Test classifier: probability = mean HU / 1000 of the image."""

    name = "score_reader"
    version = "0.1.0"
    template = "ct_lungs"  # only its identity and hash are used for a classifier
    accepts = Accepts(modalities=("CT",), planes=())
    thresholds = {"bright": 0.5}

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        probability = float(np.clip(volume.array.mean() / 1000.0, 0.0, 1.0))
        return Prediction(classifications=[Classification("bright", probability)])


class SquareFinder(InferencePlugin):
    """Test detector: one box per bright square, score = its HU / 1000."""

    name = "square_finder"
    version = "0.1.0"
    template = "ct_lungs"
    accepts = Accepts(modalities=("CT",), planes=())

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        detections = []
        for frame, image in enumerate(volume.array):
            labels, _ = ndimage.label(image > 50)
            for index, window in enumerate(ndimage.find_objects(labels), start=1):
                rows, columns = window
                score = float(image[labels == index].max()) / 1000.0
                box = (columns.start, rows.start, columns.stop, rows.stop)  # SCOORD edges
                detections.append(Detection("square", score, frame, box=tuple(map(float, box))))
        return Prediction(detections=detections)


def registry() -> PluginRegistry:
    found = PluginRegistry.discover()
    found.register(ScoreReader, source="tests")
    found.register(SquareFinder, source="tests")
    return found


@pytest.fixture(scope="module")
def classification_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classification")
    lines = ["image,finding,label"]
    for seed, (case, modality, probability, label) in enumerate(SCORES):
        path = single_image(
            root / "cases" / case, np.full((16, 16), probability * 1000), seed, modality
        )
        # Cases are named in every way the CSV allows.
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        image = [
            case,
            path.relative_to(root).as_posix(),
            str(ds.SOPInstanceUID),
            str(ds.SeriesInstanceUID),
        ][seed % 4]
        lines.append(f"{image},bright,{label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_classification_metrics_match_hand_computation(classification_set: Path) -> None:
    report = evaluate("score_reader", classification_set, registry=registry())
    assert report["summary"] == {"ok": 10, "rejected": 1, "failed": 0, "cases": 11}
    rejected = next(c for c in report["cases"] if c["status"] == "rejected")
    assert rejected["case"] == "mr" and "modality MR is not CT" in rejected["reason"]
    assert rejected["reason"].startswith("input refused by the routine's Accepts: ")  # as a job
    (finding,) = report["classification"]["findings"]
    assert finding["n"] == 10 and finding["positives"] == 4
    assert finding["auc"]["value"] == pytest.approx(21 / 24)
    low, high = finding["auc"]["ci95"]
    assert 0.5 < low < 21 / 24 < high <= 1.0
    assert finding["threshold"] == 0.5 and finding["threshold_source"] == "plugin"
    assert finding["confusion"] == {"tp": 3, "fp": 1, "tn": 5, "fn": 1}
    assert finding["sensitivity"]["value"] == pytest.approx(3 / 4)
    assert finding["specificity"]["value"] == pytest.approx(5 / 6)
    # Wilson interval for 3/4, by its closed form.
    z, n, p = 1.959964, 4, 0.75
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert finding["sensitivity"]["ci95"] == pytest.approx([centre - half, centre + half], abs=1e-5)
    # The command-line threshold wins over the plugin's.
    strict = evaluate(
        "score_reader",
        classification_set,
        registry=registry(),
        options=EvaluationOptions(thresholds={"bright": 0.8}),
    )
    (finding,) = strict["classification"]["findings"]
    assert finding["confusion"] == {"tp": 2, "fp": 0, "tn": 6, "fn": 2}
    assert finding["threshold_source"] == "command line"


def test_bootstrap_is_seeded() -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    first = score_finding("x", scores, labels, 0.5, "test", seed=3, resamples=200)
    again = score_finding("x", scores, labels, 0.5, "test", seed=3, resamples=200)
    other = score_finding("x", scores, labels, 0.5, "test", seed=4, resamples=200)
    assert first.auc == again.auc and first.auc != other.auc
    assert wilson(0, 0).value is None


# -- detection -----------------------------------------------------------------------

# Five 64x64 images; squares painted at (x0, y0, x1, y1) with HU = score * 1000.
SQUARES = {
    "a": [((10, 10, 20, 20), 0.9), ((40, 40, 48, 48), 0.3)],
    "b": [((30, 30, 40, 40), 0.6)],
    "c": [((44, 4, 54, 14), 0.8)],
    "d": [((20, 40, 28, 48), 0.4)],
    "e": [],
}
# Reference boxes: a and b are found (0.9, 0.6), c's lesion is missed; FP scores 0.3,
# 0.8, 0.4 on 5 images.
BOXES = [
    ("a", (9.0, 9.0, 21.0, 21.0)),
    ("b", (31.0, 31.0, 39.0, 39.0)),
    ("c", (5.0, 5.0, 15.0, 15.0)),
]


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detection")
    for seed, (case, squares) in enumerate(SQUARES.items()):
        hu = np.zeros((64, 64))
        for (x0, y0, x1, y1), score in squares:
            hu[y0:y1, x0:x1] = score * 1000
        single_image(root / "cases" / case, hu, 100 + seed)
    rows = ["image,finding,x_min,y_min,x_max,y_max"]
    rows += [f"{case},square,{','.join(f'{v:g}' for v in box)}" for case, box in BOXES]
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root


def test_detection_froc_matches_hand_computation(detection_set: Path) -> None:
    report = evaluate("square_finder", detection_set, registry=registry())
    (finding,) = report["detection"]["findings"]
    assert report["detection"]["hit_criterion"] == "centre"
    assert (finding["images"], finding["targets"], finding["found"]) == (5, 3, 2)
    assert finding["false_positives"] == 3
    # Operating points (FP/image, sensitivity): 0.9 -> (0, 1/3), 0.8 -> (0.2, 1/3),
    # 0.6 -> (0.2, 2/3), 0.4 -> (0.4, 2/3), 0.3 -> (0.6, 2/3).
    at = finding["sensitivity_at_fp_per_image"]
    assert at["0.125"] == pytest.approx(1 / 3)
    for rate in ("0.25", "0.5", "1", "2", "4", "8"):
        assert at[rate] == pytest.approx(2 / 3)
    assert finding["froc_score"] == pytest.approx((1 / 3 + 6 * 2 / 3) / 7)
    hit_flags = {c["case"]: [d["hit"] for d in c["detections"]] for c in report["cases"]}
    assert hit_flags == {"a": [True, False], "b": [True], "c": [False], "d": [False], "e": []}


def test_froc_counts_the_lowest_scoring_detection() -> None:
    refs = [ReferenceBox("i1", "f", (0, 0, 10, 10)), ReferenceBox("i2", "f", (0, 0, 10, 10))]
    marks = [
        PredictedMark("i1", "f", 0.9, box=(2, 2, 8, 8)),
        PredictedMark("i2", "f", 0.4, point=(5.0, 5.0)),
    ]
    scores = froc("f", marks, refs, images=2)
    assert scores.sensitivity_at[0.125] == 1.0 and scores.froc_score == 1.0


def test_hit_criteria() -> None:
    reference = (0.0, 0.0, 40.0, 40.0)
    small = PredictedMark("i", "f", 0.5, box=(18.0, 18.0, 22.0, 22.0))  # centre in, IoU 0.01
    assert hits(small, reference, "centre", 0.3)
    assert not hits(small, reference, "iou", 0.3)
    large = PredictedMark("i", "f", 0.5, box=(10.0, 10.0, 45.0, 45.0))  # IoU 0.47
    assert hits(large, reference, "iou", 0.3)


# -- dataset errors ------------------------------------------------------------------


def test_malformed_datasets_name_the_file_and_the_problem(
    classification_set: Path, tmp_path: Path
) -> None:
    with pytest.raises(DatasetError, match="cases: missing"):
        EvaluationDataset(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(classification_set, broken)
    labels = broken / "labels.csv"
    labels.write_text("image,finding,label\np1,bright,2\n")
    with pytest.raises(DatasetError, match=r"labels\.csv:2: label '2' is not 0 or 1"):
        EvaluationDataset(broken)
    labels.write_text("image,finding,label\nnowhere,bright,1\n")
    with pytest.raises(DatasetError, match=r"labels\.csv:2: image 'nowhere' is not a case"):
        EvaluationDataset(broken)
    labels.write_text("case,finding,label\np1,bright,1\n")
    with pytest.raises(DatasetError, match=r"labels\.csv: header lacks column\(s\) image"):
        EvaluationDataset(broken)
    labels.unlink()
    (broken / "boxes.csv").write_text("image,finding,x_min,y_min,x_max,y_max\np1,sq,5,5,2,9\n")
    with pytest.raises(DatasetError, match=r"boxes\.csv:2: box \(5, 5, 2, 9\) is empty"):
        EvaluationDataset(broken)
    (broken / "boxes.csv").unlink()
    (broken / "cases" / "p1" / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DatasetError, match=r"junk\.dcm: not a DICOM file"):
        EvaluationDataset(broken)
    (broken / "cases" / "p1" / "junk.dcm").unlink()
    with pytest.raises(DatasetError, match="no references"):
        EvaluationDataset(broken)


def test_a_reference_seg_of_another_series_is_named(lungs: Path, tmp_path: Path) -> None:
    swapped = tmp_path / "swapped"
    shutil.copytree(lungs, swapped)
    first, second = sorted((swapped / "cases").iterdir())[:2]
    shutil.copy(first / "reference-seg.dcm", second / "reference-seg.dcm")
    with pytest.raises(
        DatasetError, match=r"reference-seg\.dcm: the SEG references series .*, not"
    ):
        EvaluationDataset(swapped)


def test_missing_threshold_is_an_error(classification_set: Path) -> None:
    class NoThreshold(ScoreReader):
        name = "no_threshold"
        thresholds: dict[str, float] = {}

    plugins = registry()
    plugins.register(NoThreshold, source="tests")
    with pytest.raises(EvaluationError, match="--threshold bright=VALUE"):
        evaluate("no_threshold", classification_set, registry=plugins)


# -- command line, report, browser ---------------------------------------------------


def test_cli_writes_json_and_html(
    lungs: Path, shadow_database: Path, tmp_path: Path, capsys
) -> None:
    one_case = tmp_path / "one"
    first = sorted((lungs / "cases").iterdir())[0]
    shutil.copytree(first, one_case / "cases" / first.name)
    output = tmp_path / "report"
    config = tmp_path / "node.yaml"
    config.write_text(f"node:\n  data_dir: {shadow_database.parent}\n")
    code = main(
        [
            "evaluate",
            "--plugin",
            "ct_lungs",
            "--dataset",
            str(one_case),
            "--output",
            str(output),
            "--device",
            "cpu",
            "--config",
            str(config),
            "--compare-shadow",
            "--rule",
            "lungs-shadow",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Right lung: Dice mean 0.99" in printed
    assert "shadow results of rule lungs-shadow: 1 cases compared" in printed
    report = json.loads((output / "metrics.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert (report["schema"], report["schema_version"]) == ("ainode-evaluation", 1)
    assert report["device"] == "cpu"
    assert (output / "report.html").read_text().count("<svg") == 2  # Dice and HD95 box plots
    assert report["shadow"]["cases_compared"] == 1
    code = main(["evaluate", "--plugin", "ct_lungs", "--dataset", str(tmp_path / "none")])
    assert code == 2
    assert "dataset directory does not exist" in capsys.readouterr().err
    args = ["evaluate", "--plugin", "ct_lungs", "--dataset", str(one_case), "--compare-shadow"]
    assert main(args) == 2
    assert "--compare-shadow needs --rule NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args[:-1], "--threshold", "bright=2"])
    assert "is not FINDING=VALUE with VALUE in 0-1" in capsys.readouterr().err


@needs_chromium
def test_html_report_opens_in_chromium_and_shows_every_plot(
    lung_reports: tuple[dict, dict],
    classification_set: Path,
    detection_set: Path,
    tmp_path: Path,
) -> None:
    pytest.importorskip("playwright.sync_api")
    combined = dict(lung_reports[0])
    combined["classification"] = evaluate("score_reader", classification_set, registry=registry())[
        "classification"
    ]
    combined["detection"] = evaluate("square_finder", detection_set, registry=registry())[
        "detection"
    ]
    _, html = write_report(combined, tmp_path / "report")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    with browser_page(width=1200, requests=requests) as page:
        page.goto(html.as_uri())
        assert page.title() == "Evaluation of ct_lungs 1.0.0"
        headings = page.locator("h2").all_inner_texts()
        assert headings[:3] == ["Segmentation", "Classification", "Detection (FROC)"]
        plots = page.locator("svg.plot")
        labels = [plots.nth(i).get_attribute("aria-label") for i in range(plots.count())]
        assert labels == [
            "Dice per segment",
            "95th-percentile Hausdorff",
            "ROC: bright",
            "FROC: square",
        ]
        for i in range(plots.count()):
            box = plots.nth(i).bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 150
        assert page.locator("#classification").inner_text().count("0.875") >= 1
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert all(url.startswith("file://") for url in requests), requests


# -- stored (shadow) results ---------------------------------------------------------


def test_stored_results_of_a_rule_compare_with_the_evaluation(
    lungs: Path, lung_reports: tuple[dict, dict], tmp_path: Path
) -> None:
    """The job worker stored ct_lungs results for the first case only."""
    report, _ = lung_reports
    shadow = report["shadow"]
    assert shadow["rule"] == "lungs-shadow"
    assert (shadow["cases_compared"], shadow["cases_without_stored_result"]) == (1, 1)
    first = sorted((lungs / "cases").iterdir())[0]
    compared = next(c for c in shadow["cases"] if c["status"] == "compared")
    assert compared["case"] == first.name and compared["job_plugin"] == "ct_lungs"
    evaluated = next(c for c in report["cases"] if c["case"] == first.name)
    for stored, fresh in zip(compared["segments"], evaluated["segments"], strict=True):
        assert stored["dice"] == pytest.approx(fresh["dice"])  # same routine, same images
        assert stored["hd95_mm"] == pytest.approx(fresh["hd95_mm"])
        assert stored["agreement_dice"] == 1.0
    for segment in shadow["segments"]:
        assert segment["stored_dice"]["n"] == segment["evaluation_dice"]["n"] == 1
        assert segment["stored_dice"]["mean"] == pytest.approx(segment["evaluation_dice"]["mean"])
    assert [s["label"] for s in shadow["segments"]] == ["Right lung", "Left lung"]
    html = write_report(report, tmp_path / "r")[1].read_text()
    assert "Shadow results of rule lungs-shadow" in html
    with pytest.raises(DatasetError, match="no node state database"):
        evaluate("ct_lungs", lungs, shadow=ShadowSource("x", tmp_path / "missing.sqlite3"))


def store_shadow_prediction(
    database: Database, case: Path, rule: str, plugin: InferencePlugin, results: Path
) -> None:
    """A finished shadow job of ``plugin`` on ``case``, stored as the worker stores it
    (``prediction.json`` beside the results; no SEG: the routine gives no label map)."""
    queue = JobQueue(database)
    images = [pydicom.dcmread(p) for p in sorted(case.glob("*.dcm"))]
    volume = assemble_volume(images)
    job_id = queue.enqueue(
        series_uid=volume.series_instance_uid,
        study_uid=volume.study_instance_uid,
        generation=1,
        rule=rule,
        plugin=plugin.name,
        destinations=["pacs"],
        priority=5,
        now=1.0,
        shadow=True,
    )
    job = queue.claim_next(1.0)
    assert job is not None and job.id == job_id
    prediction = plugin.run(volume, RunContext(job_id, rule, torch.device("cpu")))
    result_dir = results / volume.study_instance_uid / volume.series_instance_uid / f"job-{job_id}"
    result_dir.mkdir(parents=True)
    write_summary(
        result_dir,
        prediction_json(
            prediction,
            job_id=job_id,
            rule=rule,
            plugin=plugin.name,
            plugin_version=plugin.version,
            template=plugin.template,
            study_uid=job.study_uid,
            series_uid=job.series_uid,
            shadow=True,
        ),
    )
    queue.inference_done(job_id, result_dir, 2.0)
    assert queue.get(job_id).state == "done"


class HalvedScoreReader(ScoreReader):
    """The shadow model: the same ranking, probabilities halved (miscalibrated)."""

    name = "halved_score_reader"

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        (item,) = super().run(volume, context).classifications
        return Prediction(classifications=[Classification(item.finding, item.probability / 2)])


def test_shadow_classifications_and_detections_compare_with_the_evaluation(
    classification_set: Path, detection_set: Path, tmp_path: Path
) -> None:
    database = Database(tmp_path / "state.sqlite3")
    for case in sorted((classification_set / "cases").iterdir()):
        if case.name != "mr":
            store_shadow_prediction(
                database, case, "cls-shadow", HalvedScoreReader(), tmp_path / "results"
            )
    for case in sorted((detection_set / "cases").iterdir()):
        store_shadow_prediction(database, case, "det-shadow", SquareFinder(), tmp_path / "results")
    database.close()

    report = evaluate(
        "score_reader",
        classification_set,
        registry=registry(),
        shadow=ShadowSource("cls-shadow", tmp_path / "state.sqlite3"),
    )
    shadow = report["shadow"]
    assert shadow["cases_compared"] == 10
    assert {r["status"] for r in shadow["cases"]} == {"compared", "not compared: case rejected"}
    (finding,) = shadow["classifications"]
    # Same ranking: the same AUC; halved probabilities: nothing reaches 0.5.
    assert finding["stored"]["auc"]["value"] == pytest.approx(21 / 24)
    assert finding["evaluation"]["auc"]["value"] == pytest.approx(21 / 24)
    assert finding["stored"]["confusion"] == {"tp": 0, "fp": 0, "tn": 6, "fn": 4}
    assert finding["evaluation"]["confusion"] == {"tp": 3, "fp": 1, "tn": 5, "fn": 1}
    assert finding["max_probability_difference"] == pytest.approx(0.475)

    report = evaluate(
        "square_finder",
        detection_set,
        registry=registry(),
        shadow=ShadowSource("det-shadow", tmp_path / "state.sqlite3"),
    )
    (finding,) = report["shadow"]["detections"]
    assert finding["stored"]["froc_score"] == pytest.approx((1 / 3 + 6 * 2 / 3) / 7)
    assert finding["stored"] == finding["evaluation"]
    html = write_report(report, tmp_path / "report")[1].read_text()
    assert "Shadow results of rule det-shadow" in html and "Shadow FROC" in html


class GatedScoreReader(ScoreReader):
    """Validated on 16-bit input only: the 12-bit phantom images fail bit depth."""

    name = "gated_score_reader"
    validated_on = ValidatedInput(min_bits_stored=16)


def test_input_quality_gate_warns_or_rejects_as_the_rule_says(
    classification_set: Path, tmp_path: Path
) -> None:
    plugins = registry()
    plugins.register(GatedScoreReader, source="tests")
    warned = evaluate("gated_score_reader", classification_set, registry=plugins)
    assert warned["summary"]["ok"] == 10
    first = next(c for c in warned["cases"] if c["status"] == "ok")
    assert first["quality"]["decision"] == "warn"
    assert any("bit" in w for w in first["quality"]["warnings"])
    assert "input quality: warn; " in write_report(warned, tmp_path)[1].read_text()
    skipped = evaluate(
        "gated_score_reader",
        classification_set,
        registry=plugins,
        quality=QualitySettings(on_fail="skip"),
    )
    assert skipped["summary"] == {"ok": 0, "rejected": 11, "failed": 0, "cases": 11}
    assert all("input-quality gate" in c["reason"] for c in skipped["cases"])
    assert skipped["classification"]["findings"][0]["n"] == 0


def _evaluate_command(dataset: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "node",
        "evaluate",
        "--plugin",
        "ct_lungs",
        "--dataset",
        str(dataset),
        "--output",
        str(output),
        "--device",
        "cpu",
    ]


@pytest.mark.slow
def test_cli_progress_on_a_terminal_and_in_a_log(lungs: Path, tmp_path: Path) -> None:
    """One rewritten line with n/N, elapsed and estimate on a TTY; plain lines in a log."""
    import os
    import pty
    import subprocess

    two = tmp_path / "two"
    for case in sorted((lungs / "cases").iterdir())[:2]:
        shutil.copytree(case, two / "cases" / case.name)
    env = {**os.environ, "AINODE_CONFIG": ""}
    piped = subprocess.run(
        _evaluate_command(two, tmp_path / "a"), capture_output=True, text=True, env=env, timeout=300
    )
    assert piped.returncode == 0, piped.stderr
    lines = [line for line in piped.stdout.splitlines() if line.startswith("evaluate: ")]
    assert [line.split(",")[0] for line in lines] == ["evaluate: 1/2 cases", "evaluate: 2/2 cases"]
    assert "elapsed " in lines[0] and " s left" in lines[0] and "\r" not in piped.stdout

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        _evaluate_command(two, tmp_path / "b"),
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=300) == 0
    os.close(controller)
    shown = b"".join(chunks).decode()
    assert "\revaluate: 1/2 cases" in shown and "\revaluate: 2/2 cases" in shown
    # Both updates share one line: no line break between them.
    between = shown[shown.index("1/2 cases") : shown.index("2/2 cases")]
    assert "\n" not in between
