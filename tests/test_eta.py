"""The queue's ETA: rates fitted from the job history, the claim order, the workers."""

from __future__ import annotations

import pytest

from node.orchestration.eta import estimate, fit, rate
from node.orchestration.timeline import timeline
from node.state.history import ActiveJob, JobHistory, RunSample, StageSample, device_of
from node.state.jobs import JobQueue
from node.state.series import SeriesStore
from tests.support.history import finished_job, receive_series
from tests.support.jobs import enqueue_job

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

NOW = 1_700_000_000.0


def sample(
    instances: int,
    seconds: float,
    *,
    plugin: str = "ct_lungs",
    device: str = "cpu",
    export=0.0,
    load=0.0,
    prefetched=False,
) -> RunSample:
    return RunSample(0, plugin, device, instances, seconds, export, NOW, load, prefetched)


def queued(job_id: int, instances: int = 100, *, priority: int = 5, plugin="ct_lungs"):
    return ActiveJob(job_id, plugin, "queued", priority, instances, None, "", None)


def running(job_id: int, started_at: float, instances: int = 100, *, device="cpu"):
    return ActiveJob(job_id, "ct_lungs", "running", 5, instances, started_at, device, None)


# -- the rate -------------------------------------------------------------------------------


def test_fit_finds_start_up_and_per_instance_seconds_despite_an_outlier() -> None:
    # 2 s + 10 ms per instance, and one job that stalled for a minute.
    samples = [sample(n, 2.0 + 0.01 * n) for n in (50, 100, 200, 300, 400)]
    samples.append(sample(150, 60.0))
    intercept, per_instance = fit(samples)
    assert intercept == pytest.approx(2.0, abs=0.05)
    assert per_instance == pytest.approx(0.01, rel=0.05)


def test_one_job_or_one_size_gives_a_per_instance_rate() -> None:
    assert fit([sample(100, 5.0)]) == (0.0, pytest.approx(0.05))
    assert fit([sample(100, 5.0), sample(100, 7.0), sample(100, 6.0)]) == (
        0.0,
        pytest.approx(0.06),
    )


def test_rate_prefers_the_same_device_and_says_what_it_rests_on() -> None:
    history = [sample(100, 1.0, device="cuda:0"), sample(100, 10.0, device="cpu")]
    gpu = rate(history, "ct_lungs", "cuda:0")
    assert gpu is not None and gpu.run_seconds(100) == pytest.approx(1.0)
    assert "on cuda:0" in gpu.basis and "1 earlier job" in gpu.basis and "rough" in gpu.basis
    elsewhere = rate([sample(100, 10.0, device="cpu")], "ct_lungs", "cuda:1")
    assert elsewhere is not None and "other devices" in elsewhere.basis
    assert rate(history, "ct_organs", "cpu") is None


# -- the queue ------------------------------------------------------------------------------


def test_queued_jobs_follow_the_claim_order_priority_first() -> None:
    history = [sample(n, 0.1 * n, export=2.0) for n in (10, 20, 30)]  # 0.1 s per instance
    active = [queued(1, 100), queued(2, 50), queued(3, 200, priority=0)]
    etas = estimate(history, active, ["cpu"], NOW)
    # Job 3 (urgent) first: 20 s; then job 1: 10 s; then job 2: 5 s. Each then exports 2 s.
    assert etas[3] is not None and etas[3].estimated_start == pytest.approx(NOW)
    assert etas[3].estimated_finish == pytest.approx(NOW + 22.0)
    assert etas[1] is not None and etas[1].estimated_start == pytest.approx(NOW + 20.0)
    assert etas[2] is not None and etas[2].estimated_start == pytest.approx(NOW + 30.0)
    assert etas[2].seconds_to_finish == pytest.approx(37.0)
    assert "3 earlier jobs (fitted)" in etas[2].basis


def test_a_job_behind_another_is_read_ahead_so_its_load_is_the_read_ahead_rate() -> None:
    # 100 instances: 4 s to compute; loading 6 s cold, 1 s when read ahead.
    history = [sample(100, 10.0, load=6.0), sample(100, 5.0, load=1.0, prefetched=True)]
    etas = estimate(history, [queued(1), queued(2)], ["cpu"], NOW)
    assert etas[1] is not None and etas[1].estimated_finish == pytest.approx(NOW + 10.0)
    assert etas[2] is not None and etas[2].estimated_finish == pytest.approx(NOW + 15.0)
    assert "load 60.00 ms/instance (10.00 read ahead)" in etas[2].basis
    # Without a read-ahead job on record, a queued job's load is the cold one.
    alone = estimate([sample(100, 10.0, load=6.0)], [queued(1), queued(2)], ["cpu"], NOW)
    assert alone[2] is not None and alone[2].estimated_finish == pytest.approx(NOW + 20.0)


def test_jobs_spread_over_the_workers() -> None:
    history = [sample(100, 10.0, device=d) for d in ("cuda:0", "cuda:1")]
    active = [queued(i, 100) for i in range(1, 5)]
    etas = estimate(history, active, ["cuda:0", "cuda:1"], NOW)
    starts = [etas[i].estimated_start - NOW for i in range(1, 5)]  # type: ignore[union-attr]
    assert starts == pytest.approx([0.0, 0.0, 10.0, 10.0])


def test_a_running_job_holds_its_worker_until_its_estimated_end() -> None:
    history = [sample(100, 10.0)]
    etas = estimate(history, [running(1, NOW - 4.0), queued(2)], ["cpu"], NOW)
    assert etas[1] is not None and etas[1].estimated_start == NOW - 4.0
    assert etas[1].estimated_finish == pytest.approx(NOW + 6.0)
    assert etas[2] is not None and etas[2].estimated_start == pytest.approx(NOW + 6.0)


def test_an_overdue_running_job_finishes_now_and_says_so() -> None:
    etas = estimate([sample(100, 10.0)], [running(1, NOW - 25.0), queued(2)], ["cpu"], NOW)
    late = etas[1]
    assert late is not None and late.estimated_finish == NOW and late.seconds_to_finish == 0.0
    assert late.basis.startswith("overdue by 15 s")
    assert etas[2] is not None and etas[2].estimated_start == NOW


def test_no_history_gives_no_estimate_for_it_and_the_jobs_behind_it() -> None:
    history = [sample(100, 10.0)]
    active = [queued(1, plugin="ct_organs"), queued(2)]
    etas = estimate(history, active, ["cpu"], NOW)
    assert etas[1] is None and etas[2] is None
    assert estimate([], [queued(1)], ["cpu"], NOW) == {1: None}


# -- the history from the state database -----------------------------------------------------


def test_history_reads_durations_devices_and_sizes_of_finished_jobs(database, clock) -> None:
    queue, series = JobQueue(database), SeriesStore(database)
    first = finished_job(
        queue, series, clock, series_uid="1.1", instances=4, run_seconds=3.0, export_seconds=1.5
    )
    second = finished_job(
        queue,
        series,
        clock,
        series_uid="1.2",
        instances=8,
        run_seconds=6.0,
        device="cuda:1",
        prefetched=True,
    )
    samples = JobHistory(database).run_samples()
    assert [(s.job_id, s.device, s.instances) for s in samples] == [
        (second, "cuda:1", 8),
        (first, "cpu", 4),
    ]
    assert samples[1].run_seconds == pytest.approx(3.0)
    assert samples[1].export_seconds == pytest.approx(1.5)
    assert samples[1].load_seconds == pytest.approx(1.0) and not samples[1].prefetched
    assert samples[0].load_seconds == pytest.approx(2.0) and samples[0].prefetched
    receive_series(series, clock, "1.3", 5)
    waiting = enqueue_job(queue, clock(), series_uid="1.3", priority=2)
    [active] = JobHistory(database).active_jobs()
    assert (active.job_id, active.state, active.instances, active.priority) == (
        waiting,
        "queued",
        5,
        2,
    )


def test_stage_seconds_come_from_the_job_events(database, clock) -> None:
    queue, series = JobQueue(database), SeriesStore(database)
    job_id = finished_job(
        queue,
        series,
        clock,
        series_uid="2.1",
        instances=6,
        run_seconds=3.0,
        export_seconds=2.0,
        wait_seconds=4.0,
    )
    [stages] = JobHistory(database).stage_samples(clock() - 3600)
    assert stages.job_id == job_id
    assert stages.seconds == pytest.approx(
        {"receive": 5.0, "wait": 4.0, "load": 1.0, "infer": 1.0, "encode": 1.0, "export": 2.0}
    )
    assert JobHistory(database).stage_samples(clock() + 1) == []


def test_device_of_reads_the_worker_owner() -> None:
    assert device_of("owner=host:12:worker-cuda:0") == "cuda:0"
    assert device_of("owner=host:12:worker-cpu") == "cpu"
    # A named node (several nodes sharing one state) appends @name to its owners.
    assert device_of("owner=host:12:worker-cuda:1@node-a:11112 lease=60") == "cuda:1"
    assert device_of("owner=host:12:worker-cpu@host:11112") == "cpu"
    assert device_of("") == ""


def test_timeline_bins_count_finished_jobs_and_take_stage_medians() -> None:
    samples = [
        StageSample(1, NOW + 10, {"infer": 1.0, "load": 2.0}),
        StageSample(2, NOW + 20, {"infer": 3.0}),
        StageSample(3, NOW + 50, {"infer": 7.0}),
        StageSample(4, NOW + 500, {"infer": 9.0}),  # after the span
    ]
    result = timeline(samples, since=NOW, until=NOW + 60, bins=2)
    assert [b["finished"] for b in result["bins"]] == [2, 1]
    assert result["bins"][0]["median_seconds"]["infer"] == 2.0
    assert result["bins"][0]["median_seconds"]["load"] == 2.0
    assert result["bins"][1]["median_seconds"]["load"] is None
    assert result["finished"] == 3 and result["bin_seconds"] == 30.0


def test_the_tracker_keeps_each_jobs_first_queued_estimate_and_measures_its_error() -> None:
    from benchmarks.eta_accuracy import EtaTracker

    def job(job_id: int, state: str, finish: str | None) -> dict:
        eta = None if finish is None else {"estimated_finish": finish, "basis": "b"}
        return {"id": job_id, "state": state, "eta": eta}

    tracker = EtaTracker()
    start = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    tracker.observe([job(1, "queued", "2027-01-15T08:00:10Z"), job(2, "queued", None)], start)
    tracker.observe([job(1, "queued", "2027-01-15T08:00:30Z"), job(2, "running", "x")], start + 5)
    assert list(tracker.first) == [1]  # the later estimate and a running job's are not kept
    summary = tracker.summary({1: start + 14.0, 3: start})
    assert summary["jobs"] == 1 and summary["median_error_s"] == pytest.approx(4.0)
    assert summary["median_relative_error"] == pytest.approx(4.0 / 14.0, abs=1e-3)
    assert EtaTracker().summary({}) == {"jobs": 0}


def test_the_eta_section_prints_and_plots_its_result(tmp_path) -> None:
    from benchmarks.eta_accuracy import plot, table

    result = {
        "learn_slices": [20, 40],
        "burst_slices": [24],
        "rows": 64,
        "jobs": 1,
        "median_error_s": -2.0,
        "median_abs_error_s": 2.0,
        "p90_abs_error_s": 2.0,
        "median_relative_error": 0.25,
        "per_job": [{"job_id": 3, "waited_s": 8.0, "error_s": -2.0, "basis": "b"}],
    }
    assert "median -2.0 s" in table(result)[1]
    assert table({"jobs": 0}) == ["Queue ETA: no job was seen queued with an estimate"]
    plot(result, tmp_path / "eta.png")
    assert (tmp_path / "eta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
