"""The ingest benchmark's table and plot from a result (no receivers run here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.ingest import IngestResult, ingest_table, plot, tree_cpu_seconds

RESULT = {
    "images_per_run": 303,
    "file_kib": 513.1,
    "image": "512x512 16-bit CT, explicit VR little endian",
    "runs": 2,
    "max_pdu": 131072,
    "modes": [1, 4],
    "receivers": {
        "storescp/1": {"images_per_s": [300.0, 310.0], "median_images_per_s": 305.0},
        "orthanc/1": {"images_per_s": [90.0, 86.0], "median_images_per_s": 88.0},
        "node/1": {"error": "node did not start\nlog tail"},
        "storescp/4": {"images_per_s": [430.0, 440.0], "median_images_per_s": 435.0},
        "orthanc/4": {
            "images_per_s": [110.0, 120.0],
            "median_images_per_s": 115.0,
            "cpu_ms_per_instance": 3.81,
        },
        "node/4": {"images_per_s": [90.0, 92.0], "median_images_per_s": 91.0},
    },
    "ratios": {"4": {"node_over_orthanc": 0.791, "node_over_storescp": 0.209}},
}


def test_table_has_a_line_per_receiver_and_mode_and_the_ratios() -> None:
    lines = ingest_table(RESULT)
    assert any(line.split()[:4] == ["orthanc", "4", "115.0", "3.81"] for line in lines)
    assert any(line.split()[:4] == ["node", "4", "91.0", "-"] for line in lines)  # not measured
    assert any("node" in line and "not measured: node did not start" in line for line in lines)
    assert lines[-1] == "  4 association(s): node/Orthanc 0.79, node/storescp 0.21"


def test_table_shows_the_node_in_one_process_as_its_own_row_and_the_process_counts() -> None:
    result = {
        **RESULT,
        "receiver_processes": {"node": 2, "node-1proc": 1},
        "receivers": {
            **RESULT["receivers"],  # type: ignore[dict-item]
            "node-1proc/4": {"images_per_s": [150.0, 160.0], "median_images_per_s": 155.0},
        },
        "ratios": {
            "4": {
                "node_over_orthanc": 0.791,
                "node_over_storescp": 0.209,
                "node_1proc_over_orthanc": 1.348,
                "node_1proc_over_storescp": 0.356,
            }
        },
    }
    lines = ingest_table(result)
    assert lines[1] == "  receiving processes: node 2, node-1proc 1"
    assert any(line.split()[:3] == ["node-1proc", "4", "155.0"] for line in lines)
    assert lines[-1] == (
        "  4 association(s): node/Orthanc 0.79, node/storescp 0.21,"
        " node-1proc/Orthanc 1.35, node-1proc/storescp 0.36"
    )


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "ingest.png"
    plot(RESULT, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tree_cpu_seconds_counts_live_children_and_waited_ones() -> None:
    """A receiver's CPU includes its processes' children (a node's receiver processes,
    storescp's forks), read from /proc."""

    def own() -> float:
        times = os.times()
        return times.user + times.system

    spin = (
        "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    )
    before, own_before = tree_cpu_seconds(os.getpid()), own()
    assert before is not None
    child = subprocess.Popen(
        [sys.executable, "-c", spin + "\nsys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while (tree_cpu_seconds(child.pid) or 0) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        live = tree_cpu_seconds(os.getpid())
        assert live is not None and live - before - (own() - own_before) >= 0.25  # the child's
    finally:
        child.communicate(b"")
    waited = tree_cpu_seconds(os.getpid())
    assert waited is not None and waited - before - (own() - own_before) >= 0.25  # its cutime
    assert tree_cpu_seconds(None) is None


def test_cpu_per_instance_is_the_median_run_over_its_instances() -> None:
    entry = IngestResult("orthanc", 1, 300, seconds=[1.0, 1.0, 1.0])
    entry.cpu_seconds = [1.2, None, 0.9]
    assert entry.cpu_ms_per_instance == 3.5  # median of 1.2 and 0.9 s over 300
    assert entry.as_dict()["cpu_ms_per_instance"] == 3.5
    assert IngestResult("node", 1, 300).cpu_ms_per_instance is None
