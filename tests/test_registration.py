"""Rigid registration of a prior study: prior lookup, SimpleITK routine, Spatial Registration.

The prior is the same synthetic patient as the current chest CT, moved by a known rigid
transform onto another grid in another study and Frame of Reference
(:mod:`tools.synthetic.prior_ct`). The routine runs through the real worker; the REG it
writes is checked with dciodvfy and its matrix against the truth (target registration
error at anatomical landmarks and at the corners of a box around the chest).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from node.contract.assemble import assemble_volume
from node.contract.kinds import file_tag, profile_tags
from node.contract.plugin import Prediction, Registration, RunContext
from node.contract.volume import Volume
from node.errors import InputRejected, JobTimeout
from node.orchestration.priors import NoPrior, find_prior
from node.results import build_results, load_template_by_name
from node.results.reg.registration import SPATIAL_REGISTRATION_STORAGE, registration_matrices
from node.state.db import Database
from node.state.jobs import JobQueue
from node.state.series import SeriesStore
from plugins.rigid_registration import RigidRegistrationPlugin
from plugins.rigid_registration.rigid import register_rigid
from tests.support.dcmtk import storescu
from tests.support.jobs import enqueue_series
from tests.support.pacs import one_result_each, orthanc_and_node_process
from tests.support.spool import spool_series
from tests.support.validators import dcentvfy_output, dciodvfy_errors
from tests.support.worker import cpu_worker
from tools.synthetic.chest_ct import make_chest_ct, write_series
from tools.synthetic.prior_ct import PriorTruth, make_prior_ct, rigid_matrix

SEED = 21
#: The current CT: 100 slices of 3 mm, 160 x 160 pixels of 2.4 mm (384 mm field of view).
CURRENT = {"n_slices": 100, "rows": 160, "columns": 160, "pixel_spacing_mm": 2.4}
#: The prior: another grid (2 mm pixels, 2.5 mm slices), moved by 3/-2/4 degrees, 12/-18/30 mm.
PRIOR = {"rows": 200, "columns": 200, "pixel_spacing_mm": 2.0}
#: Largest target registration error accepted (mm).
MAX_TRE_MM = 1.0


def store_series(store: SeriesStore, datasets: Sequence[Dataset], spool: Path, now: float) -> None:
    """Spool a series the way ingest does and complete it."""
    spool_series(store, datasets, spool / str(datasets[0].SeriesInstanceUID), now)
    store.force_complete(str(datasets[0].SeriesInstanceUID), now)


def landmarks(truth: PriorTruth) -> dict[str, np.ndarray]:
    """Points in current patient coordinates where the registration error is measured."""
    anatomy = truth.anatomy
    points = {
        "right lung centre": np.array(anatomy.right_lung.center_mm),
        "left lung centre": np.array(anatomy.left_lung.center_mm),
        "carina": np.array([*anatomy.trachea_center_xy_mm, anatomy.carina_z_mm]),
    }
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                points[f"box corner {sx:+d}{sy:+d}{sz:+d}"] = np.array(
                    [120.0 * sx, 80.0 * sy - 10.0, 110.0 * sz]
                )
    return points


def target_errors(matrix: np.ndarray, truth: PriorTruth) -> dict[str, float]:
    """Distance (mm) between where ``matrix`` and the truth put each landmark."""
    errors = {}
    for name, point in landmarks(truth).items():
        in_prior = truth.to_prior(point)[0]
        mapped = matrix[:3, :3] @ in_prior + matrix[:3, 3]
        errors[name] = float(np.linalg.norm(mapped - point))
    return errors


# -- pieces that need no registration ---------------------------------------------------


def test_prior_truth_maps_both_ways() -> None:
    matrix = rigid_matrix((3.0, -2.0, 4.0), (12.0, -18.0, 30.0))
    assert np.allclose(matrix[:3, :3] @ matrix[:3, :3].T, np.eye(3))
    truth = PriorTruth(matrix, (3.0, -2.0, 4.0), (12.0, -18.0, 30.0), anatomy=None)  # type: ignore[arg-type]
    points = np.array([[10.0, 20.0, 30.0], [-50.0, 0.0, 100.0]])
    assert np.allclose(truth.to_current(truth.to_prior(points)), points)
    assert np.allclose(truth.to_current([[0.0, 0.0, 0.0]])[0], [12.0, -18.0, 30.0])


def _registration(**changes: object) -> Registration:
    fields: dict[str, object] = {
        "matrix": rigid_matrix((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)),
        "source_frame_of_reference_uid": "1.2.3.1",
        "target_frame_of_reference_uid": "1.2.3.2",
        "source_study_instance_uid": "1.2.3.3",
        "source_series_instance_uid": "1.2.3.4",
        "source_instances": (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5"),),
        "metric": "correlation",
        "metric_value": 0.98,
    }
    fields.update(changes)
    return Registration(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"matrix": np.diag([2.0, 1.0, 1.0, 1.0])}, "not rigid"),
        ({"matrix": np.diag([-1.0, 1.0, 1.0, 1.0])}, "not rigid"),
        ({"matrix": np.eye(3)}, "4x4"),
        (
            {"matrix": np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]])},
            "last row",
        ),
        ({"source_frame_of_reference_uid": ""}, "source_frame_of_reference_uid"),
        ({"source_instances": ()}, "no prior instances"),
        ({"metric_value": float("nan")}, "correlation"),
    ],
)
def test_registration_refuses_what_dicom_rigid_cannot_say(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        _registration(**changes)


def small_ct(seed: int, **header: str) -> list[Dataset]:
    """A 3-slice CT (for the lookup, which reads headers only) with header changes."""
    datasets, _ = make_chest_ct(n_slices=3, rows=16, columns=16, seed=seed)
    for dataset in datasets:
        for keyword, value in header.items():
            setattr(dataset, keyword, value)
    return datasets


def test_prior_lookup_picks_the_latest_earlier_series_of_the_patient(tmp_path: Path) -> None:
    database = Database(tmp_path / "state.sqlite3")
    store = SeriesStore(database)
    patient = {"PatientID": "P1", "IssuerOfPatientID": "HOSP_A"}
    current = small_ct(1, StudyDate="20240601", **patient)
    series = {
        "older": small_ct(2, StudyDate="20220101", **patient),
        "latest earlier": small_ct(3, StudyDate="20231201", **patient),
        "later": small_ct(4, StudyDate="20250101", **patient),
        "other patient": small_ct(5, StudyDate="20240101", PatientID="P2"),
        "other issuer": small_ct(6, StudyDate="20240102", PatientID="P1"),
        "other region": small_ct(7, StudyDate="20240103", BodyPartExamined="HEAD", **patient),
        "other modality": small_ct(8, StudyDate="20240104", Modality="MR", **patient),
        "same study": small_ct(
            9, StudyDate="20240601", StudyInstanceUID=current[0].StudyInstanceUID, **patient
        ),
    }
    for number, datasets in enumerate([current, *series.values()]):
        store_series(store, datasets, tmp_path / "spool", now=1000.0 + number)
    prior = find_prior(store, assemble_volume(current))
    assert prior.series_uid == series["latest earlier"][0].SeriesInstanceUID
    assert prior.when == "20231201090000"
    assert len(prior.paths) == 3 and prior.candidates == 6
    assert "P1" not in prior.describe()  # no patient data in the job timeline


def test_prior_lookup_accepts_comparable_body_parts_and_says_why_there_is_none(
    tmp_path: Path,
) -> None:
    database = Database(tmp_path / "state.sqlite3")
    store = SeriesStore(database)
    current = small_ct(1, StudyDate="20240601", PatientID="P1", BodyPartExamined="THORAX")
    wider = small_ct(2, StudyDate="20230601", PatientID="P1", BodyPartExamined="CHEST_ABDOMEN")
    store_series(store, current, tmp_path / "spool", 1.0)
    with pytest.raises(NoPrior, match="no prior CT of this patient"):
        find_prior(store, assemble_volume(current))
    store_series(store, small_ct(3, StudyDate="20230601", PatientID="P9"), tmp_path / "s", 2.0)
    with pytest.raises(NoPrior, match=r"1 looked at: 1 another patient"):
        find_prior(store, assemble_volume(current))
    store_series(store, wider, tmp_path / "spool", 3.0)
    assert find_prior(store, assemble_volume(current)).series_uid == wider[0].SeriesInstanceUID
    anonymous = small_ct(4, PatientID="")
    with pytest.raises(NoPrior, match="has no PatientID"):
        find_prior(store, assemble_volume(anonymous))
    assert issubclass(NoPrior, InputRejected)


# -- the routine through the worker -------------------------------------------------


@dataclass(frozen=True)
class RegistrationRun:
    current: list[Dataset]
    prior: list[Dataset]
    truth: PriorTruth
    reg_path: Path
    reg: Dataset
    events: list[tuple[str, str]]
    seconds: float


def run_worker(
    database: Database,
    tmp_path: Path,
    series: Sequence[Sequence[Dataset]],
    job_series: Sequence[Dataset],
) -> tuple[JobQueue, int, float]:
    store, queue, worker = cpu_worker(
        database,
        [RigidRegistrationPlugin],
        results_dir=tmp_path / "results",
        clock=lambda: 200.0,
        prefetch=False,
    )
    for number, datasets in enumerate(series):
        store_series(store, datasets, tmp_path / "spool", now=100.0 + number)
    job_id = enqueue_series(
        queue, job_series, rule="follow-up", plugin="rigid_registration", now=200.0
    )
    started = time.perf_counter()
    assert worker.run_once()
    return queue, job_id, time.perf_counter() - started


@pytest.fixture(scope="module")
def registration_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistrationRun]:
    tmp_path = tmp_path_factory.mktemp("registration")
    current, _ = make_chest_ct(seed=SEED, series_description="Chest CT follow-up", **CURRENT)
    prior, truth = make_prior_ct(seed=SEED, **PRIOR)
    database = Database(tmp_path / "state.sqlite3")
    queue, job_id, seconds = run_worker(database, tmp_path, [prior, current], current)
    job = queue.get(job_id)
    assert job is not None and job.state == "done", job  # no destinations: kept on disk
    assert job.result_dir is not None
    (reg_path,) = sorted(Path(job.result_dir).glob("*.dcm"))
    events = [(event.event, event.detail) for event in queue.events(job_id)]
    yield RegistrationRun(
        current, prior, truth, reg_path, pydicom.dcmread(reg_path), events, seconds
    )
    database.close()


def test_registration_recovers_the_known_transform(registration_run: RegistrationRun) -> None:
    matrix = registration_matrices(registration_run.reg)[
        str(registration_run.prior[0].FrameOfReferenceUID)
    ]
    errors = target_errors(matrix, registration_run.truth)
    print(  # the report's numbers (pytest -s)
        "TRE mm: "
        + ", ".join(f"{name} {error:.2f}" for name, error in errors.items())
        + f"; max {max(errors.values()):.2f}; job {registration_run.seconds:.1f} s"
    )
    assert max(errors.values()) < MAX_TRE_MM, errors
    # Without registration the same points are tens of mm apart.
    assert min(target_errors(np.eye(4), registration_run.truth).values()) > 20.0


def test_job_names_its_prior_and_writes_one_reg(registration_run: RegistrationRun) -> None:
    assert file_tag(registration_run.reg_path.name) == "reg"
    detail = dict(registration_run.events)["prior_found"]
    assert f"series={registration_run.prior[0].SeriesInstanceUID}" in detail
    assert "instances=110" in detail and "date=20230601" in detail


def test_reg_object_is_valid_and_references_both_studies(registration_run: RegistrationRun) -> None:
    reg, current, prior = registration_run.reg, registration_run.current, registration_run.prior
    assert dciodvfy_errors(registration_run.reg_path) == []
    assert reg.SOPClassUID == SPATIAL_REGISTRATION_STORAGE and reg.Modality == "REG"
    assert reg.StudyInstanceUID == current[0].StudyInstanceUID
    assert reg.PatientID == current[0].PatientID == prior[0].PatientID
    assert reg.FrameOfReferenceUID == current[0].FrameOfReferenceUID
    identity, moved = reg.RegistrationSequence
    assert identity.FrameOfReferenceUID == current[0].FrameOfReferenceUID
    assert moved.FrameOfReferenceUID == prior[0].FrameOfReferenceUID != reg.FrameOfReferenceUID
    transformation = moved.MatrixRegistrationSequence[0].MatrixSequence[0]
    assert transformation.FrameOfReferenceTransformationMatrixType == "RIGID"
    assert moved.MatrixRegistrationSequence[0].RegistrationTypeCodeSequence[0].CodeValue == "125024"
    matrices = registration_matrices(reg)
    assert np.array_equal(matrices[current[0].FrameOfReferenceUID], np.eye(4))
    assert {i.ReferencedSOPInstanceUID for i in moved.ReferencedImageSequence} == {
        ds.SOPInstanceUID for ds in prior
    }
    assert len(identity.ReferencedImageSequence) == len(current)
    (same_study,) = reg.ReferencedSeriesSequence
    assert same_study.SeriesInstanceUID == current[0].SeriesInstanceUID
    (other,) = reg.StudiesContainingOtherReferencedInstancesSequence
    assert other.StudyInstanceUID == prior[0].StudyInstanceUID
    assert other.ReferencedSeriesSequence[0].SeriesInstanceUID == prior[0].SeriesInstanceUID
    assert len(other.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(prior)


def test_reg_and_current_series_agree_on_patient_and_study(
    registration_run: RegistrationRun, tmp_path: Path
) -> None:
    sources = write_series(registration_run.current, tmp_path / "current")
    sources += write_series(registration_run.prior, tmp_path / "prior")
    report = dcentvfy_output([*sources, registration_run.reg_path])
    errors = [line for line in report if line.startswith("Error")]
    assert errors == [], errors[:5]


def test_reg_uids_depend_on_current_and_prior(registration_run: RegistrationRun) -> None:
    """Rebuilding gives the same UIDs; another prior gives others."""
    template = load_template_by_name("rigid_registration")
    volume = assemble_volume(registration_run.current)
    registration = Registration(
        matrix=registration_matrices(registration_run.reg)[
            str(registration_run.prior[0].FrameOfReferenceUID)
        ],
        source_frame_of_reference_uid=str(registration_run.prior[0].FrameOfReferenceUID),
        target_frame_of_reference_uid=volume.frame_of_reference_uid,
        source_study_instance_uid=str(registration_run.prior[0].StudyInstanceUID),
        source_series_instance_uid=str(registration_run.prior[0].SeriesInstanceUID),
        source_instances=tuple(
            (ds.SOPClassUID, ds.SOPInstanceUID) for ds in registration_run.prior
        ),
        metric="correlation",
        metric_value=0.9,
    )
    again = build_results(volume, Prediction(registration=registration), template, tags={"reg"})
    (rebuilt,) = again.objects["reg"]
    assert rebuilt.SOPInstanceUID == registration_run.reg.SOPInstanceUID
    assert rebuilt.SeriesInstanceUID == registration_run.reg.SeriesInstanceUID
    fewer = Registration(
        **{**registration.__dict__, "source_instances": registration.source_instances[1:]}
    )
    other = build_results(volume, Prediction(registration=fewer), template, tags={"reg"})
    assert other.objects["reg"][0].SOPInstanceUID != rebuilt.SOPInstanceUID
    # Only a prediction with a registration gives a REG.
    assert build_results(volume, Prediction(), template, tags=profile_tags(["reg"])).objects == {}


def test_job_without_a_prior_fails_saying_so(tmp_path: Path) -> None:
    # 2.4 mm pixels: a series the routine was validated on (no quality warning on the job).
    current, _ = make_chest_ct(n_slices=12, rows=96, columns=96, pixel_spacing_mm=2.4, seed=SEED)
    database = Database(tmp_path / "state.sqlite3")
    queue, job_id, _ = run_worker(database, tmp_path, [current], current)
    job = queue.get(job_id)
    assert job is not None and job.state == "failed"
    assert job.error is not None and "NoPrior: no prior CT of this patient" in job.error
    database.close()


def small_volumes() -> tuple[Volume, Volume]:
    """A coarse current CT and a prior of the same patient (fast to register)."""
    current, _ = make_chest_ct(n_slices=30, rows=80, columns=80, pixel_spacing_mm=4.8, seed=SEED)
    prior, _ = make_prior_ct(seed=SEED, n_slices=30, rows=64, columns=64, pixel_spacing_mm=5.0)
    return assemble_volume(current), assemble_volume(prior)


def test_deadline_stops_the_registration() -> None:
    current, prior = small_volumes()
    calls = []

    def expire_on_third_call() -> None:
        calls.append(1)
        if len(calls) >= 3:
            raise JobTimeout("job 7 ran past its time limit")

    with pytest.raises(JobTimeout, match="job 7"):
        register_rigid(current, prior, threads=1, raise_if_expired=expire_on_third_call)
    assert len(calls) == 3


def test_a_prior_that_does_not_match_is_refused() -> None:
    current, prior = small_volumes()
    noise = np.random.default_rng(0).uniform(-1000, 1000, prior.shape).astype(np.float32)
    unrelated = dataclasses.replace(prior, array=noise)
    plugin = RigidRegistrationPlugin()
    context = RunContext(1, "follow-up", torch.device("cpu"), prior=unrelated)
    with pytest.raises(InputRejected, match=r"registration refused: correlation -?0\.\d\d"):
        plugin.run(current, context)
    with pytest.raises(InputRejected, match="needs a prior"):
        plugin.run(current, RunContext(1, "follow-up", torch.device("cpu")))


# -- end to end into Orthanc --------------------------------------------------------------


@pytest.mark.slow
def test_prior_and_current_into_the_node_reg_into_orthanc(tmp_path: Path) -> None:
    current, _ = make_chest_ct(seed=SEED, series_description="Chest CT follow-up", **CURRENT)
    prior, truth = make_prior_ct(seed=SEED, **PRIOR)
    rule = {
        "name": "follow-up-registration",
        "match": {"Modality": "CT", "SeriesDescription": {"regex": "(?i)follow-up"}},
        "plugin": "rigid_registration",
    }
    with orthanc_and_node_process(tmp_path, [rule], results=["reg"]) as (pacs, node):
        for name, datasets in (("prior", prior), ("current", current)):
            files = write_series(datasets, tmp_path / name)
            storescu(node.dicom_port, files, "SCANNER", called_ae=node.ae_title)
        study_uid = str(current[0].StudyInstanceUID)
        reg = one_result_each(pacs, study_uid, ["REG"])["REG"]
    path = tmp_path / "reg.dcm"
    reg.save_as(path)
    assert dciodvfy_errors(path) == []
    matrix = registration_matrices(reg)[str(prior[0].FrameOfReferenceUID)]
    errors = target_errors(matrix, truth)
    print(f"e2e TRE mm: max {max(errors.values()):.2f}")
    assert max(errors.values()) < MAX_TRE_MM, errors
    assert reg.StudiesContainingOtherReferencedInstancesSequence[0].StudyInstanceUID == (
        prior[0].StudyInstanceUID
    )
