"""The soak benchmark's arithmetic: slopes, ETA errors, leftovers in temp folders."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from benchmarks.soak import eta_errors, leftovers, slope


def test_slope_is_the_least_squares_slope_and_needs_three_points() -> None:
    assert slope([0, 1, 2, 3], [10, 12, 14, 16]) == pytest.approx(2.0)
    assert slope([0, 1, 2, 3], [5, 5, 5, 5]) == pytest.approx(0.0)
    assert slope([0, 0, 1], [1, 2, 3]) is None


def test_eta_error_compares_the_first_estimate_with_the_actual_finish() -> None:
    iso = datetime.datetime.fromtimestamp(1000.0, datetime.UTC).isoformat()
    etas = {
        1: {"seen_at": 900.0, "eta": {"estimated_finish": iso, "basis": "ct_lungs"}},
        2: {"seen_at": 900.0, "eta": {"estimated_finish": None, "seconds_to_finish": 50}},
        3: {"seen_at": 900.0, "eta": None},  # no estimate yet: not counted
        4: {"seen_at": 900.0, "eta": {"estimated_finish": 1000.0}},  # never finished
    }
    jobs = [
        {"id": 1, "finished_at": 1010.0},
        {"id": 2, "finished_at": 940.0},
        {"id": 3, "finished_at": 990.0},
        {"id": 4, "finished_at": None},
    ]
    found = eta_errors(etas, jobs, field_seen=True)
    assert found["jobs"] == 2 and found["jobs_seen_queued"] == 4
    assert found["median_abs_error_s"] == pytest.approx(10.0)
    assert found["p90_abs_error_s"] == pytest.approx(10.0)
    assert eta_errors(etas, jobs, field_seen=False)["available"] is False


def test_leftovers_finds_files_in_tmpdir_and_temporary_files_in_the_data_dir(
    tmp_path: Path,
) -> None:
    data, tmp = tmp_path / "data", tmp_path / "tmp"
    (data / "spool" / "1.2" / "3.4").mkdir(parents=True)
    (data / "spool" / "1.2" / "3.4" / "5.6.dcm").write_bytes(b"x")
    tmp.mkdir()
    assert leftovers(data, tmp)["empty"] is True
    (data / "spool" / "1.2" / "3.4" / ".5.7.abc.tmp").write_bytes(b"x")
    (data / "summary.json.partial").write_bytes(b"x")
    (tmp / "tmpabc").write_bytes(b"x")
    left = leftovers(data, tmp)
    assert left["empty"] is False and left["tmpdir_count"] == 1
    assert left["data_dir_temp_files"] == ["spool/1.2/3.4/.5.7.abc.tmp", "summary.json.partial"]
