"""The ingest benchmark's table and plot from a result (no receivers run here)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.ingest import ingest_table, plot

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
        "orthanc/4": {"images_per_s": [110.0, 120.0], "median_images_per_s": 115.0},
        "node/4": {"images_per_s": [90.0, 92.0], "median_images_per_s": 91.0},
    },
    "ratios": {"4": {"node_over_orthanc": 0.791, "node_over_storescp": 0.209}},
}


def test_table_has_a_line_per_receiver_and_mode_and_the_ratios() -> None:
    lines = ingest_table(RESULT)
    assert any(line.split()[:3] == ["orthanc", "4", "115.0"] for line in lines)
    assert any("node" in line and "not measured: node did not start" in line for line in lines)
    assert lines[-1] == "  4 association(s): node/Orthanc 0.79, node/storescp 0.21"


def test_table_shows_the_node_with_two_receiver_processes_as_its_own_row() -> None:
    result = {
        **RESULT,
        "receivers": {
            **RESULT["receivers"],  # type: ignore[dict-item]
            "node-2rx/4": {"images_per_s": [150.0, 160.0], "median_images_per_s": 155.0},
        },
        "ratios": {
            "4": {
                "node_over_orthanc": 0.791,
                "node_over_storescp": 0.209,
                "node_2rx_over_orthanc": 1.348,
                "node_2rx_over_storescp": 0.356,
            }
        },
    }
    lines = ingest_table(result)
    assert any(line.split()[:3] == ["node-2rx", "4", "155.0"] for line in lines)
    assert lines[-1] == (
        "  4 association(s): node/Orthanc 0.79, node/storescp 0.21,"
        " node-2rx/Orthanc 1.35, node-2rx/storescp 0.36"
    )


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "ingest.png"
    plot(RESULT, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
