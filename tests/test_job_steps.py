"""A job in three steps (prepare, execute, record), the executor and the result plan."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from node.contract.kinds import file_tag, profile_tags
from node.contract.plugin import Accepts, InferencePlugin, Prediction, Registration, RunContext
from node.contract.volume import Volume
from node.errors import InputRejected
from node.orchestration.execute import execute
from node.orchestration.executor import LocalExecutor
from node.orchestration.job import DONE, FAILED, SKIPPED, JobInput, JobOutput
from node.orchestration.prepare import Sources, prepare
from node.orchestration.record import record
from node.orchestration.registry import PluginRegistry
from node.orchestration.summary import read_summary
from node.orchestration.worker import InferenceWorker
from node.results.manifest import MANIFEST, check_results
from node.results.plan import ResultPlan
from node.state.events import EventCode
from node.state.jobs import JobQueue
from node.state.series import SeriesStore
from tests.support.jobs import enqueue_series
from tests.support.spool import spool_series
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

CPU = torch.device("cpu")


class Threshold(InferencePlugin):
    """Labels voxels above 0 HU."""

    name = "threshold"
    version = "1.2"
    template = "ct_lungs"
    accepts = Accepts(min_slices=10)

    def load(self, device: torch.device) -> None:
        pass

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        return Prediction(label_map=(volume.array > 0).astype(np.uint8))


class Raises(Threshold):
    name = "raises"

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        raise ValueError("the model diverged")


def _registry() -> PluginRegistry:
    registry = PluginRegistry()
    registry.register(Threshold)
    registry.register(Raises)
    return registry


def _series(tmp_path: Path, n_slices: int = 12) -> list[Dataset]:
    datasets, _ = make_chest_ct(n_slices=n_slices, rows=32, columns=32, pixel_spacing_mm=8.0)
    return datasets


def _job_input(paths: tuple[Path, ...], result_dir: Path, plugin: str = "threshold") -> JobInput:
    return JobInput(
        job_id=7,
        rule="chest",
        plugin=plugin,
        plugin_version="1.2",
        device="cpu",
        template="ct_lungs",
        templates_dir=None,
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        instance_paths=paths,
        plan=ResultPlan.for_job(["pacs", "gone"], {"pacs": profile_tags(["seg", "sr"])}),
        result_dir=result_dir,
    )


# -- execute: files in, files out, no database ---------------------------------


def test_execute_builds_and_writes_the_planned_results_without_a_database(
    tmp_path: Path,
) -> None:
    paths = tuple(write_series(_series(tmp_path), tmp_path / "series"))
    result_dir = tmp_path / "results" / "job-7"
    output = execute(_job_input(paths, result_dir), _registry())
    assert output.outcome == DONE, output
    assert output.result_dir == result_dir
    assert sorted(f.tag for f in output.files) == ["seg", "sr"]
    assert all(f.destinations == ("pacs",) for f in output.files)
    listed = json.loads((result_dir / MANIFEST).read_text(encoding="utf-8"))
    assert sorted(listed["files"]) == sorted(f.path.name for f in output.files)
    assert check_results(result_dir) is None
    assert [file_tag(f.path.name) for f in output.files] == [f.tag for f in output.files]
    assert [code.event for code, _, _ in output.events] == [
        "volume_loaded",
        "inference_done",
        "encoded",
    ]
    assert [offset for _, _, offset in output.events] == sorted(o for _, _, o in output.events)
    assert 0 < output.events[-1][2] <= output.elapsed
    assert "slices=12" in output.events[0][1] and "prefetched=False" in output.events[0][1]
    assert set(output.seconds) == {"load", "infer", "encode"}
    summary = read_summary(result_dir)
    assert summary == output.summary and summary is not None
    assert summary["plugin_version"] == "1.2"


def test_execute_skips_input_the_routine_does_not_accept(tmp_path: Path) -> None:
    paths = tuple(write_series(_series(tmp_path, n_slices=5), tmp_path / "series"))
    output = execute(_job_input(paths, tmp_path / "results"), _registry())
    assert output.outcome == SKIPPED and output.code == "skipped.accepts"
    assert output.source == "accepts" and [c["check"] for c in output.checks] == ["accepts"]
    assert "5 slices; at least 10" in (output.message or "")
    assert [code.event for code, _, _ in output.events] == ["volume_loaded"]
    assert not (tmp_path / "results").exists()


def test_execute_turns_a_raising_routine_into_a_failed_output(tmp_path: Path) -> None:
    paths = tuple(write_series(_series(tmp_path), tmp_path / "series"))
    output = execute(_job_input(paths, tmp_path / "results", plugin="raises"), _registry())
    assert output.outcome == FAILED and output.code == "failed.ValueError"
    assert output.reason == "ValueError: the model diverged"
    assert [code.event for code, _, _ in output.events] == ["volume_loaded"]
    assert output.files == ()


# -- prepare and record --------------------------------------------------------


def test_prepare_reads_the_job_and_the_next_queued_one_from_state(
    database, clock, tmp_path: Path
) -> None:
    series, queue = SeriesStore(database), JobQueue(database)
    datasets = _series(tmp_path)
    spool_series(series, datasets, tmp_path / "spool", clock())
    first = enqueue_series(queue, datasets, rule="first", plugin="threshold", now=clock())
    second = enqueue_series(queue, datasets, rule="second", plugin="threshold", now=clock())
    job = queue.claim_next(clock())
    assert job is not None and job.id == first
    sources = Sources(queue, series, _registry(), CPU, tmp_path / "results")
    job_input = prepare(job, sources)
    paths = tuple(series.instance_paths(job.series_uid))
    assert job_input.instance_paths == paths and len(paths) == 12
    assert (job_input.plugin_version, job_input.template) == ("1.2", "ct_lungs")
    assert job_input.result_dir == tmp_path / "results" / job.study_uid / job.series_uid / (
        f"job-{first}"
    )
    assert job_input.plan == ResultPlan() and job_input.plan.requested == {"seg", "sr"}
    assert job_input.revision == 1 and job_input.previous_result_dir is None
    assert job_input.prior is None
    assert job_input.read_ahead == (second, paths)
    unread = Sources(queue, series, _registry(), CPU, tmp_path / "results", read_ahead=False)
    assert prepare(job, unread).read_ahead is None


def test_record_writes_the_events_then_the_end_state(database, clock, tmp_path: Path) -> None:
    series, queue = SeriesStore(database), JobQueue(database)
    datasets = _series(tmp_path)
    spool_series(series, datasets, tmp_path / "spool", clock())
    ids = [
        enqueue_series(queue, datasets, rule=rule, plugin="threshold", now=clock())
        for rule in ("done", "skipped", "failed")
    ]
    jobs = [queue.claim_next(clock()) for _ in ids]
    events = (
        (EventCode.VOLUME_LOADED, "slices=12", 1.0),
        (EventCode.INFERENCE_DONE, "seconds=0.1", 4.0),
    )
    clock.advance(100)  # the job ran 10 s, its volume was loaded after 1 s, inferred after 4
    outputs = [
        JobOutput(ids[0], DONE, events=events, elapsed=10.0, result_dir=tmp_path / "r"),
        JobOutput(
            ids[1],
            SKIPPED,
            message="input refused",
            source="accepts",
            checks=({"check": "accepts", "message": "too few slices"},),
            events=events[:1],
        ),
        JobOutput(ids[2], FAILED, message="boom", error_type="ValueError", events=events[:1]),
    ]
    for job, output in zip(jobs, outputs, strict=True):
        assert job is not None
        record(job, output, queue, clock)
    done, skipped, failed = (queue.get(i) for i in ids)
    assert done is not None and done.state == "done" and done.result_dir == tmp_path / "r"
    timeline = queue.events(ids[0])
    assert [e.event for e in timeline] == [
        *("queued", "started", "volume_loaded", "inference_done", "results_written", "done")
    ]
    assert [e.at - clock() for e in timeline[2:4]] == [-9.0, -6.0]  # dated when they happened
    assert skipped is not None and skipped.state == "skipped"
    detail = json.loads(next(e.detail for e in queue.events(ids[1]) if e.event == "skipped"))
    assert detail["checks"] == [{"check": "accepts", "message": "too few slices"}]
    assert failed is not None and (failed.state, failed.error) == ("failed", "ValueError: boom")
    assert "volume_loaded" in [e.event for e in queue.events(ids[2])]


def test_job_input_and_output_of_a_real_job_pickle(database, clock, tmp_path: Path) -> None:
    """What an executor in another process would receive and send back."""
    series, queue = SeriesStore(database), JobQueue(database)
    datasets = _series(tmp_path)
    spool_series(series, datasets, tmp_path / "spool", clock())
    enqueue_series(queue, datasets, rule="chest", plugin="threshold", now=clock())
    job = queue.claim_next(clock())
    assert job is not None
    registry = _registry()
    job_input = prepare(job, Sources(queue, series, registry, CPU, tmp_path / "results"))
    output = execute(job_input, registry)
    assert output.outcome == DONE and output.files
    for value in (job_input, output):
        data = pickle.dumps(value)
        assert pickle.loads(data) == value
        assert len(data) < 20_000  # paths and strings, no pixel data or datasets


# -- the executor --------------------------------------------------------------


def test_local_executor_runs_jobs_and_a_raising_routine_gives_a_failed_output(
    tmp_path: Path,
) -> None:
    paths = tuple(write_series(_series(tmp_path), tmp_path / "series"))
    executor = LocalExecutor(_registry(), [CPU])
    try:
        futures = [
            executor.submit(_job_input(paths, tmp_path / "a")),
            executor.submit(_job_input(paths, tmp_path / "b", plugin="raises")),
            executor.submit(_job_input(paths, tmp_path / "c")),
        ]
        done_a, failed, done_c = (f.result(timeout=120) for f in futures)
    finally:
        executor.shutdown()
    assert (done_a.outcome, done_c.outcome) == (DONE, DONE)
    assert done_a.result_dir == tmp_path / "a" and done_c.result_dir == tmp_path / "c"
    assert failed.outcome == FAILED and failed.reason == "ValueError: the model diverged"


def test_the_worker_loop_records_a_failed_job_and_goes_on(database, clock, tmp_path) -> None:
    series, queue = SeriesStore(database), JobQueue(database)
    datasets = _series(tmp_path)
    spool_series(series, datasets, tmp_path / "spool", clock())
    bad = enqueue_series(queue, datasets, rule="bad", plugin="raises", now=clock())
    good = enqueue_series(queue, datasets, rule="good", plugin="threshold", now=clock())
    registry = _registry()
    executor = LocalExecutor(registry, [CPU])
    worker = InferenceWorker(
        queue,
        series,
        registry,
        device=CPU,
        results_dir=tmp_path / "results",
        templates_dir=None,
        clock=clock,
        executor=executor,
    )
    try:
        assert worker.run_once() and worker.run_once() and not worker.run_once()
    finally:
        executor.shutdown()
    states = {job_id: (queue.get(job_id) or pytest.fail()).state for job_id in (bad, good)}
    assert states == {bad: "failed", good: "done"}


# -- the result plan -----------------------------------------------------------


def _prediction(**fields: object) -> Prediction:
    return Prediction(**fields)  # type: ignore[arg-type]


def test_plan_drops_seg_kinds_without_a_label_map_with_the_reason() -> None:
    plan = ResultPlan.for_job(["pacs"], {"pacs": profile_tags(["seg", "sr", "gsps"])})
    classified = _prediction(classifications=[])
    with pytest.raises(InputRejected, match="fills none of the result kinds"):
        plan.resolve(classified)  # nothing to report at all
    segmented = plan.resolve(_prediction(label_map=np.zeros((2, 2, 2), np.uint8)))
    assert segmented.tags == {"seg", "sr", "gsps"} and segmented.dropped == ()


def test_plan_fractional_seg_needs_probabilities_and_reg_needs_a_registration() -> None:
    profiles = {"a": profile_tags(["fractional_seg", "sr", "reg"]), "b": profile_tags(["seg"])}
    plan = ResultPlan.for_job(["a", "b"], profiles)
    resolved = plan.resolve(_prediction(label_map=np.zeros((2, 2, 2), np.uint8)))
    assert resolved.tags == {"seg"}
    assert plan.destinations_of("seg") == ("b",)
    assert [d.log_reason for d in resolved.dropped] == ["no_probabilities", "no_registration"]
    assert resolved.dropped[0].level == logging.WARNING
    assert resolved.dropped[0].detail() == (
        "fractional_seg,sr.fractional_seg: the plugin gives no probabilities"
    )


def test_plan_keeps_a_registration_alone_and_notes_it_is_not_sent() -> None:
    registration = Registration(
        np.eye(4), "1.2", "1.3", "1.4", "1.5", (("1.2.840.10008.5.1.4.1.1.2", "1.6"),), "ncc", 0.9
    )
    plan = ResultPlan.for_job(["pacs"], {"pacs": profile_tags(["seg", "sr"])})
    resolved = plan.resolve(_prediction(registration=registration))
    assert resolved.tags == {"reg"}
    assert resolved.notices == (
        "reg is built but no destination of this job lists 'reg' in its results",
    )
    assert ResultPlan().resolve(_prediction(registration=registration)).notices == ()
