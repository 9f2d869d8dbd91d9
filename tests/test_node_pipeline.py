"""The node's boxes wired together in-process, driven step by step with a fake clock."""

from __future__ import annotations

import json

import pydicom
import pytest

from node.api.dicomweb import _study_status
from node.app import Node
from node.config import settings_from_mapping
from tests.support.node import listening_node, send_to_node, stepped_settings
from tools.synthetic.chest_ct import make_chest_ct, write_series


@pytest.fixture
def node(tmp_path, clock):
    settings = stepped_settings(
        tmp_path,
        {
            "rules": [
                {"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"},
                {"name": "never", "match": {"Modality": "MR"}, "plugin": "ct_lungs"},
            ],
        },
    )
    with listening_node(settings, clock) as node:
        yield node


def test_failing_job_keeps_its_reason_and_the_node_keeps_serving(node, clock, tmp_path):
    short, _ = make_chest_ct(n_slices=10, rows=64, columns=64, seed=1)
    good, _ = make_chest_ct(n_slices=30, rows=96, columns=96, seed=2)
    send_to_node(node, write_series(short, tmp_path / "short"))
    clock.advance(5)
    assert node.completion.poll() == []  # not quiet long enough
    send_to_node(node, write_series(good, tmp_path / "good"))
    clock.advance(10)
    completed = node.completion.poll()
    assert {row.instance_count for row in completed} == {10, 30}

    jobs = node.queue.jobs()
    assert [job.rule for job in jobs] == ["chest", "chest"]  # the MR rule did not fire
    assert node.worker.run_once() and node.worker.run_once()
    assert not node.worker.run_once()

    by_series = {job.series_uid: node.queue.get(job.id) for job in jobs}
    # Too few slices for the routine's Accepts: skipped (not failed), the refusal on the job.
    skipped = by_series[short[0].SeriesInstanceUID]
    assert skipped.state == "skipped"
    assert skipped.error.startswith("input refused by the routine's Accepts: ")
    assert "20" in skipped.error
    (event,) = [e for e in node.queue.events(skipped.id) if e.event == "skipped"]
    detail = json.loads(event.detail)
    assert detail["source"] == "accepts" and detail["reason"] == skipped.error
    assert [c["check"] for c in detail["checks"]] == ["accepts"]
    # The study's status (Orthanc's "AI node status" button) says skipped, not done.
    assert _study_status(node, short[0].StudyInstanceUID)["status"] == "skipped"
    assert _study_status(node, good[0].StudyInstanceUID)["status"] == "done"
    done = by_series[good[0].SeriesInstanceUID]
    assert done.state == "done"  # no destination: results stay on disk
    written = sorted(done.result_dir.glob("*.dcm"))
    assert {pydicom.dcmread(p).Modality for p in written} == {"SEG", "SR"}
    assert done.result_dir.is_relative_to(node.results_dir)
    events = [e.event for e in node.queue.events(done.id)]
    assert events == [
        "queued", "started", "quality_checked", "volume_loaded", "inference_done", "encoded",
        "results_written", "done",
    ]  # fmt: skip


def test_unknown_plugin_in_a_rule_stops_start_up(tmp_path):
    from node.errors import ConfigError

    settings = settings_from_mapping(
        {
            "node": {"data_dir": str(tmp_path)},
            "rules": [{"name": "x", "match": {}, "plugin": "no_such_plugin"}],
        },
        environ={},
    )
    with pytest.raises(ConfigError, match=r"rules\[0\]\.plugin: unknown plugin 'no_such_plugin'"):
        Node(settings)
