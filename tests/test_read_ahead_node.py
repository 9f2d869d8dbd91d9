"""Issue 14, the ``load`` stage end to end: a real node process reads a series during its
quiet period; its job records ``prefetched=True`` with the same SEG pixels as a node that
does not read ahead, and an instance arriving after the read started makes the job read
the whole series again."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.support.dcmtk import storescu
from tests.support.net import wait_until
from tests.test_completion_bounds import rows
from tests.test_dicomweb import TOKEN, multipart, stow_headers
from tools.node_process import NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series


def config(read_ahead_mb: int, quiet: float, *, while_arriving: bool = True) -> dict[str, object]:
    return {
        "completion": {"poll_seconds": 0.2, "series_quiet_seconds": quiet},
        "workers": {"read_ahead_mb": read_ahead_mb, "read_while_arriving": while_arriving},
        "rules": [{"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}],
    }


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory) -> list[Path]:
    datasets, _ = make_chest_ct(n_slices=40, rows=128, columns=128, pixel_spacing_mm=3.0, seed=3)
    return write_series(datasets, tmp_path_factory.mktemp("ahead"))


def _job(node: NodeProcess) -> tuple[str, str]:
    """The one job's final state and its ``volume_loaded`` detail."""
    wait_until(
        lambda: [r["state"] for r in rows(node, "SELECT state FROM jobs")] == ["done"],
        60,
        message="job done",
    )
    (loaded,) = rows(node, "SELECT detail FROM job_events WHERE code = 'inference.volume_loaded'")
    return "done", str(loaded["detail"])


def _quality(node: NodeProcess) -> str:
    """The job's ``quality_checked`` detail without its timing."""
    (checked,) = rows(node, "SELECT detail FROM job_events WHERE code = 'quality.checked'")
    return re.sub(r" seconds=[0-9.]+", "", str(checked["detail"]))


def _seg_pixels(node: NodeProcess) -> bytes:
    (seg,) = [
        ds
        for ds in (pydicom.dcmread(p) for p in node.results_dir.rglob("*.dcm"))
        if ds.Modality == "SEG"
    ]
    return bytes(seg.PixelData)


@pytest.mark.slow
def test_real_node_reads_the_series_in_its_quiet_period(tmp_path, ct_files):
    with NodeProcess(config(1536, 2.0), workdir=tmp_path / "ahead") as node:
        storescu(node.dicom_port, ct_files, called_ae=node.ae_title)
        _, detail = _job(node)
        assert "prefetched=True" in detail and f"slices={len(ct_files)}" in detail
        assert "quiet read-ahead started" in node.log_text()
        # Read while arriving: at the 32nd instance stored, every file stored by then.
        (arrived,) = re.findall(
            r"quiet read-ahead done .* read_while_arriving=(\d+)", node.log_text()
        )
        assert 32 <= int(arrived) <= len(ct_files)
        ahead = _seg_pixels(node)
        measured_ahead = _quality(node)  # ct_lungs' gate measured by the read-ahead
        assert measured_ahead.endswith(" measured=ahead")
    with NodeProcess(config(0, 2.0), workdir=tmp_path / "plain") as node:
        storescu(node.dicom_port, ct_files, called_ae=node.ae_title)
        _, detail = _job(node)
        assert "prefetched=False" in detail
        assert "quiet read-ahead" not in node.log_text()
        assert _seg_pixels(node) == ahead
        assert _quality(node) + " measured=ahead" == measured_ahead


@pytest.mark.slow
def test_real_node_reads_again_after_a_late_instance(tmp_path, ct_files):
    with NodeProcess(config(1536, 4.0), workdir=tmp_path / "late") as node:
        storescu(node.dicom_port, ct_files[:-1], called_ae=node.ae_title)
        wait_until(lambda: "quiet read-ahead started" in node.log_text(), 3, message="read-ahead")
        time.sleep(0.2)
        storescu(node.dicom_port, ct_files[-1:], called_ae=node.ae_title)
        _, detail = _job(node)
        # The late instance restarted the quiet period: the series was read again, whole,
        # and the job took that read (never the stale one of one instance fewer).
        started = re.findall(
            r"quiet read-ahead started series_uid=\S+ instances=(\d+)", node.log_text()
        )
        assert started[:1] == [str(len(ct_files) - 1)] and started[-1] == str(len(ct_files))
        assert f"slices={len(ct_files)}" in detail
        assert rows(node, "SELECT instance_count FROM series")[0][0] == len(ct_files)


def _reads(node: NodeProcess) -> list[tuple[int, str]]:
    """Each read-ahead started: (instances, trigger)."""
    found = re.findall(
        r"quiet read-ahead started series_uid=\S+ instances=(\d+) trigger=(\w+)", node.log_text()
    )
    return [(int(count), trigger) for count, trigger in found]


@pytest.mark.slow
def test_real_node_reads_a_series_as_soon_as_its_association_is_released(tmp_path, ct_files):
    # A long quiet period: a read started by it would come 2 s after the last instance.
    config_ = config(1536, 8.0, while_arriving=False)
    with NodeProcess(config_, workdir=tmp_path / "released") as node:
        storescu(node.dicom_port, ct_files, called_ae=node.ae_title)
        wait_until(lambda: _reads(node), 5, message="read-ahead")
        assert _reads(node) == [(len(ct_files), "delivered")]
        _, detail = _job(node)
        assert "prefetched=True" in detail and f"slices={len(ct_files)}" in detail
        assert _reads(node) == [(len(ct_files), "delivered")]  # not read again
        assert "read_while_arriving=0 " in node.log_text()  # switched off: all read now


@pytest.mark.slow
def test_real_node_waits_for_the_quiet_period_when_a_series_came_over_two_associations(
    tmp_path, ct_files
):
    half = len(ct_files) // 2
    with NodeProcess(config(1536, 8.0), workdir=tmp_path / "two") as node:
        storescu(node.dicom_port, ct_files[:half], called_ae=node.ae_title)
        wait_until(lambda: _reads(node), 5, message="read-ahead of the first part")
        storescu(node.dicom_port, ct_files[half:], called_ae=node.ae_title)
        _, detail = _job(node)
        # The first association held the whole series so far: read on its release. The
        # second delivered only a part: the whole series was read when it turned quiet.
        assert _reads(node) == [(half, "delivered"), (len(ct_files), "quiet")]
        assert "prefetched=True" in detail and f"slices={len(ct_files)}" in detail


@pytest.mark.slow
def test_real_node_reads_a_series_as_soon_as_its_stow_rs_request_ends(tmp_path, ct_files):
    settings = {**config(1536, 8.0), "dicomweb": {"tokens": [{"name": "t", "token": TOKEN}]}}
    with NodeProcess(settings, workdir=tmp_path / "stow") as node:
        body, boundary = multipart([("application/dicom", p.read_bytes()) for p in ct_files])
        answer = httpx.post(
            f"{node.url}/dicomweb/studies", content=body, headers=stow_headers(boundary), timeout=60
        )
        assert answer.status_code == 200, answer.text
        wait_until(lambda: _reads(node), 5, message="read-ahead")
        assert _reads(node) == [(len(ct_files), "delivered")]
        _, detail = _job(node)
        assert "prefetched=True" in detail and f"slices={len(ct_files)}" in detail
