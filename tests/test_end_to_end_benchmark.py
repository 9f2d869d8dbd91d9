"""The end-to-end benchmark's stage split: the export stage ends when the destination
acknowledged the results, and Orthanc's REST lag is its own stage."""

from __future__ import annotations

import pytest

from benchmarks.end_to_end import STAGES, stage_split


def event(at: float, name: str, detail: str = "") -> dict[str, object]:
    return {"job_id": 1, "at": at, "event": name, "detail": detail}


EVENTS = [
    event(102.1, "queued"),
    event(102.2, "started"),
    event(102.5, "volume_loaded", "seconds=0.25"),
    event(103.0, "inference_done", "seconds=0.5"),
    event(103.6, "encoded", "seconds=0.55"),
    event(103.7, "results_written"),
    event(104.5, "sent", "pacs"),
    event(104.51, "done"),
]


def test_export_ends_at_the_acknowledgement_and_visible_is_the_rest() -> None:
    split = stage_split(EVENTS, acked_at=100.0, found_at=104.6, quiet_seconds=2.0)
    assert split["export"] == pytest.approx(0.8)  # results written -> acknowledged
    assert split["visible"] == pytest.approx(0.1)  # acknowledged -> found over REST
    assert split["completion"] == pytest.approx(0.1)
    assert sum(split.values()) == pytest.approx(104.6 - 100.0 - 2.0, abs=0.01)
    assert list(split) == list(STAGES)


def test_without_a_sent_event_export_runs_until_the_results_are_found() -> None:
    events = [e for e in EVENTS if e["event"] != "sent"]
    split = stage_split(events, acked_at=100.0, found_at=104.6, quiet_seconds=2.0)
    assert split["export"] == pytest.approx(0.9) and split["visible"] == 0.0
