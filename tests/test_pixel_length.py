"""Bad uncompressed pixel data is refused when it arrives (issue 11, item 8).

A truncated Pixel Data, a 1-byte one and a 256 x 256 array under a 512 x 512 header were
answered 0x0000 and failed their whole series at inference. The length is now checked at
receive time (:mod:`node.pixel_length`): C-STORE answers 0xC003 and STOW-RS lists the
instance in FailedSOPSequence with that reason; the log names the SOP Instance UID and why.
The good instances of the same association or request are stored as before.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from node.dicom import status
from node.pixel_length import pixel_data_problem
from tests.support.net import wait_until
from tests.test_dicomweb import TOKEN, failures, multipart, stored, stow_headers
from tools.net import LOCALHOST, free_port
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import upload_many
from tools.synthetic.chest_ct import make_chest_ct, write_series


def image(
    rows: int = 4,
    columns: int = 4,
    bits: int = 16,
    samples: int = 1,
    frames: int | None = None,
    length: int | None = None,
    element: str = "PixelData",
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """A data set with an Image Pixel description and ``length`` bytes of pixel data
    (default: the right number)."""
    dataset = Dataset()
    dataset.Rows, dataset.Columns = rows, columns
    dataset.BitsAllocated, dataset.SamplesPerPixel = bits, samples
    dataset.PhotometricInterpretation = photometric
    if frames is not None:
        dataset.NumberOfFrames = frames
    pixels = rows * columns * samples * (frames or 1)
    right = (pixels + 7) // 8 if bits == 1 else pixels * bits // 8
    setattr(dataset, element, bytes(right if length is None else length))
    return dataset


NATIVE = str(ExplicitVRLittleEndian)
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.mark.parametrize(
    ("dataset", "syntax"),
    [
        (image(), NATIVE),
        (image(bits=8, rows=3, columns=3, length=10), NATIVE),  # 9 bytes + padding byte
        (image(bits=8, rows=3, columns=3, length=9), NATIVE),
        (image(bits=1, rows=7, columns=7), NATIVE),  # 49 bits: 7 bytes
        (image(bits=1, rows=7, columns=7, length=8), NATIVE),  # … padded to 8
        (image(bits=1, rows=4, columns=4), NATIVE),
        (image(bits=8, samples=3, photometric="RGB"), NATIVE),
        (image(bits=8, samples=3, length=32, photometric="YBR_FULL_422"), NATIVE),
        (image(frames=5), NATIVE),
        (image(length=34), NATIVE),  # trailing padding short of a frame (MR_small_padded)
        (image(frames=5, length=32 * 5 + 30), NATIVE),
        (image(bits=32, element="FloatPixelData"), NATIVE),
        (image(bits=64, element="DoubleFloatPixelData"), NATIVE),
        (image(), DeflatedExplicitVRLittleEndian),
        (image(length=2), str(RLELossless)),  # encapsulated: not checked this way
        (image(length=2), str(JPEGBaseline8Bit)),
        (Dataset(), NATIVE),  # no pixel data (SR, KO…)
    ],
)
def test_matching_pixel_data_is_accepted(dataset: Dataset, syntax: str) -> None:
    assert pixel_data_problem(dataset, syntax) is None


@pytest.mark.parametrize(
    ("dataset", "syntax", "reason"),
    [
        (image(rows=512, columns=512, length=256 * 256 * 2), NATIVE, "131072 bytes, 524288"),
        (image(length=2), NATIVE, "2 bytes, 32 expected"),
        (image(length=0), NATIVE, "0 bytes"),
        (image(length=64), NATIVE, "64 bytes, 32 expected"),  # a frame too many
        (image(frames=5, length=32), NATIVE, "5 frame(s)"),
        (image(frames=5, length=32 * 6), NATIVE, "192 bytes, 160 expected"),
        (image(bits=1, rows=4, columns=4, length=4), NATIVE, "4 bytes, 2 expected"),
        (image(bits=8, samples=3, length=16, photometric="YBR_FULL_422"), NATIVE, "32 expected"),
        (image(bits=32, element="FloatPixelData", length=16), NATIVE, "FloatPixelData has 16"),
        (image(bits=16, element="FloatPixelData"), NATIVE, "BitsAllocated 16 (32 required)"),
        (image(bits=64, element="DoubleFloatPixelData", length=8), NATIVE, "has 8 bytes"),
        (image(length=2), DeflatedExplicitVRLittleEndian, "2 bytes, 32 expected"),
        (image(bits=12), NATIVE, "BitsAllocated 12"),
    ],
)
def test_mismatching_pixel_data_is_named(dataset: Dataset, syntax: str, reason: str) -> None:
    problem = pixel_data_problem(dataset, syntax)
    assert problem is not None and reason in problem


def test_pixel_data_without_its_description_is_named() -> None:
    dataset = image()
    del dataset.Rows
    assert pixel_data_problem(dataset, NATIVE) == "PixelData without Rows"


# -- through the node process: storescu and STOW-RS --------------------------------------


def bad_copies(good: Dataset, big: Dataset, directory: Path) -> dict[str, Path]:
    """A truncated, a 1-byte and a 256 x 256 under a 512 x 512 copy of ``good`` (a new SOP
    Instance UID each, the same patient, study and series)."""
    directory.mkdir(parents=True, exist_ok=True)
    copies = {}
    for name in ("truncated", "one-byte", "256-under-512"):
        dataset = pydicom.dcmread(good.filename)
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        if name == "truncated":
            dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 2]
        elif name == "one-byte":
            dataset.PixelData = b"\x00"
        else:
            assert (big.Rows, big.Columns) == (256, 256)
            dataset.PixelData = big.PixelData
            dataset.Rows = dataset.Columns = 512
        path = directory / f"{name}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        copies[name] = path
    return copies


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def held(node: NodeProcess, study_uid: str) -> tuple[set[str], set[str]]:
    """SOP Instance UIDs of the study in the spool (a receiver process's subdirectory
    included) and in the database."""
    spool = node.data_dir / "spool"
    files = {p.stem for p in spool.rglob("*.dcm") if study_uid in p.relative_to(spool).parts}
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        rows = {
            str(r[0])
            for r in db.execute("SELECT sop_uid FROM instances WHERE study_uid = ?", (study_uid,))
        }
    return files, rows


@pytest.mark.slow
def test_bad_pixel_data_is_refused_and_the_rest_is_stored(tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(n_slices=6, rows=64, columns=64, seed=41)
    good = write_series(datasets, tmp_path / "good")
    (big,), _ = make_chest_ct(n_slices=1, rows=256, columns=256, seed=42)
    first = pydicom.dcmread(good[0])
    study_uid = str(first.StudyInstanceUID)
    bad = bad_copies(first, big, tmp_path / "bad")
    for name, path in bad.items():  # what a sender would send: a readable file
        assert pydicom.dcmread(path).PixelData, name
    config = {
        "completion": {"series_quiet_seconds": 3600},
        "dicomweb": {"tokens": [{"name": "tests", "token": TOKEN}]},
    }
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        # One storescu association: good, bad, good, bad, bad, good…
        files = [good[0], bad["truncated"], *good[1:3], bad["one-byte"], bad["256-under-512"]]
        files += good[3:]
        result = subprocess.run(
            ["storescu", "-v", "--no-halt", "-aet", "SCANNER", "-aec", node.ae_title, LOCALHOST,
             str(node.dicom_port), *map(str, files)],
            env=DCMTK_ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert output.count("Received Store Response (Success)") == len(good), output
        assert output.count("Received Store Response (Error") == len(bad), output
        good_uids = {uid_of(p) for p in good}
        assert held(node, study_uid) == (good_uids, good_uids)
        log = node.log_text().splitlines()
        for name, path in bad.items():
            lines = [line for line in log if uid_of(path) in line]
            assert len(lines) == 1, name
            assert f"status=0x{status.PIXEL_DATA_MISMATCH:04X}" in lines[0], lines[0]
            assert "C-STORE refused" in lines[0] and "PixelData has" in lines[0], lines[0]

        # STOW-RS: the same bad instances with two new good ones, in one request.
        more, _ = make_chest_ct(n_slices=2, rows=64, columns=64, seed=41)
        extra = []
        for index, dataset in enumerate(more):
            dataset.StudyInstanceUID = study_uid
            dataset.SeriesInstanceUID = first.SeriesInstanceUID
            dataset.SOPInstanceUID = generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            path = tmp_path / f"extra-{index}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            extra.append(path)
        parts = [extra[0], *bad.values(), extra[1]]
        body, boundary = multipart([("application/dicom", p.read_bytes()) for p in parts])
        answer = httpx.post(
            f"{node.url}/dicomweb/studies",
            content=body,
            headers=stow_headers(boundary),
            timeout=60,
        )
        assert answer.status_code == 202, answer.text
        assert stored(answer.json()) == {uid_of(p) for p in extra}
        assert sorted(failures(answer.json())) == sorted(
            (uid_of(p), status.PIXEL_DATA_MISMATCH) for p in bad.values()
        )
        expected = good_uids | {uid_of(p) for p in extra}
        assert held(node, study_uid) == (expected, expected)
        log = node.log_text()
        for path in bad.values():
            assert f"STOW-RS instance refused status=0xC003 sop_uid={uid_of(path)}" in log


def test_the_bad_copies_are_what_the_issue_describes(tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(n_slices=1, rows=64, columns=64, seed=43)
    (good,) = write_series(datasets, tmp_path / "good")
    (big,), _ = make_chest_ct(n_slices=1, rows=256, columns=256, seed=44)
    bad = bad_copies(pydicom.dcmread(good), big, tmp_path / "bad")
    lengths = {name: len(pydicom.dcmread(p).PixelData) for name, p in bad.items()}
    assert lengths == {"truncated": 64 * 64, "one-byte": 2, "256-under-512": 256 * 256 * 2}
    assert np.asarray(pydicom.dcmread(good).pixel_array).shape == (64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["pacs-web", "pacs-get"])
def test_pulled_instances_with_bad_pixel_data_are_refused(tmp_path: Path, source: str) -> None:
    """A pull (WADO-RS or C-GET) checks the same: the bad instances are counted failed and
    logged, the good ones stored."""
    seed = {"pacs-web": 45, "pacs-get": 46}[source]
    datasets, _ = make_chest_ct(n_slices=4, rows=64, columns=64, seed=seed)
    good = write_series(datasets, tmp_path / "good")
    (big,), _ = make_chest_ct(n_slices=1, rows=256, columns=256, seed=seed + 10)
    first = pydicom.dcmread(good[0])
    study_uid = str(first.StudyInstanceUID)
    bad = bad_copies(first, big, tmp_path / "bad")
    node_port = free_port()
    with OrthancServer(
        modalities={"ainode": ["AINODE", LOCALHOST, node_port]}, workdir=tmp_path / "pacs"
    ) as pacs:
        upload_many(pacs.client, [*good, *bad.values()])
        dimse = {"ae_title": pacs.aet, "host": LOCALHOST, "port": pacs.dicom_port}
        config = {
            "node": {"dicom_port": node_port},
            "completion": {"series_quiet_seconds": 3600},
            "dicomweb": {"tokens": [{"name": "tests", "token": TOKEN}]},
            "sources": {
                "pacs-web": {"kind": "dicomweb", "url": f"{pacs.url}/dicom-web"},
                "pacs-get": {"kind": "dimse", **dimse, "retrieve": "get"},
            },
        }
        with NodeProcess(config, workdir=tmp_path / "node") as node:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            answer = httpx.post(
                f"{node.url}/api/pull",
                json={"source": source, "series_uid": str(first.SeriesInstanceUID)},
                headers=headers,
                timeout=30,
            )
            assert answer.status_code == 202, answer.text
            url = f"{node.url}/api/pull/{answer.json()['id']}"

            def done() -> dict[str, Any] | None:
                pull: dict[str, Any] = httpx.get(url, headers=headers, timeout=30).json()
                return pull if pull["state"] in ("done", "failed") else None

            pull = wait_until(done, 120, interval=0.25, message="pull")
            (series,) = pull["series"]
            assert (series["stored"], series["failed"]) == (len(good), len(bad)), pull
            good_uids = {uid_of(p) for p in good}
            assert held(node, study_uid) == (good_uids, good_uids)
            log = node.log_text()
            for path in bad.values():
                assert f"status=0xC003 sop_uid={uid_of(path)}" in log or (
                    f"sop_uid={uid_of(path)} reason=PixelData has" in log
                ), path.name
