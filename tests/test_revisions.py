"""Result revisions count the generations that produced results (issue 11 item 15).

A series whose first generation produced nothing (cut short, refused by the routine) and
that then completed had its first result labelled "(rev 2, supersedes earlier)", though
nothing earlier existed to supersede.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest

from tests.support.dcmtk import StoreSCP, storescu
from tests.support.net import wait_until
from tools.net import LOCALHOST, free_port
from tools.node_process import NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series


def job_states(node: NodeProcess) -> list[str]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        return [state for (state,) in db.execute("SELECT state FROM jobs ORDER BY id")]


def finished(node: NodeProcess, count: int) -> list[str]:
    def done() -> list[str] | None:
        states = job_states(node)
        ended = len(states) == count and all(s in ("done", "failed", "skipped") for s in states)
        return states if ended else None

    return wait_until(done, 180, message=f"{count} jobs finished")


def descriptions(scp: StoreSCP, modality: str) -> set[str]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in scp.received()]
    return {str(h.SeriesDescription) for h in headers if h.Modality == modality}


@pytest.mark.slow
def test_first_results_after_a_generation_that_produced_nothing_are_no_revision(
    tmp_path: Path,
) -> None:
    datasets, _ = make_chest_ct(n_slices=25, rows=128, columns=128, pixel_spacing_mm=3.0, seed=8)
    files = sorted(
        write_series(datasets, tmp_path / "series"),
        key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber),
    )
    port = free_port()
    scp = StoreSCP(port, tmp_path / "pacs")
    config = {
        "completion": {"series_quiet_seconds": 1.0, "poll_seconds": 0.2},
        "destinations": {"pacs": {"ae_title": "PACS", "host": LOCALHOST, "port": port}},
        "rules": [
            {
                "name": "chest",
                "match": {"Modality": "CT"},
                "plugin": "ct_lungs",
                "send_to": ["pacs"],
            },
        ],
    }
    try:
        with NodeProcess(config, workdir=tmp_path / "node") as node:

            def send(paths: list[Path]) -> None:
                storescu(node.dicom_port, paths, called_ae=node.ae_title)

            send(files[:4])  # generation 1: 4 slices, fewer than ct_lungs takes
            assert finished(node, 1) == ["skipped"]  # too short for the routine: no results
            assert scp.received() == []
            send(files[4:24])  # generation 2: 24 slices, the first results
            assert finished(node, 2) == ["skipped", "done"]
            assert descriptions(scp, "SR") == {"AI lungs SR"}
            assert descriptions(scp, "SEG") == {"AI lungs SEG"}
            send(files[24:])  # generation 3: supersedes generation 2's results
            assert finished(node, 3) == ["skipped", "done", "done"]
    finally:
        scp.stop()
    assert descriptions(scp, "SR") == {"AI lungs SR", "AI lungs SR (rev 2, supersedes earlier)"}
