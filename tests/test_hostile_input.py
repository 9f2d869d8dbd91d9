"""Bad and unusual input through a real node process (issue 13): each case has one outcome.

Every case is generated here (synthetic phantoms, no patient data) and sent over the network
to one ``ainode serve`` process: with dcmtk's ``storescu`` where dcmtk can send it, with
pynetdicom where the case needs protocol control (a data set storescu would not read, a SOP
Class that disagrees with the presentation context). The outcome of each case is one of

* ``processed``: accepted (0x0000), a job ran and its result files exist;
* ``reason: …``: accepted, the job did not run, and its reason is in ``GET /api/jobs/{id}``
  (the job's ``error`` or an event's detail);
* ``status 0xNNNN``: refused with that DIMSE status (or ``context rejected`` at association);
* ``stored``: accepted and stored; no rule applies (no job is expected).

After the hostile cases a normal series sent to the same process is processed normally.
:data:`OUTCOMES` is the table the closing note of issue 13 quotes.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config

from node.state.db import Database
from node.state.users import UserStore
from tests.support.net import wait_until
from tests.support.scu import associate
from tools.net import LOCALHOST
from tools.node_process import NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series
from tools.synthetic.degraded import to_8_bit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),  # a hang fails the test instead of stalling the suite
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RULE = {
    "name": "ct-lungs",
    "match": {"Modality": "CT"},
    "plugin": "ct_lungs",
    "send_to": [],
}
CONFIG = {
    "completion": {"series_quiet_seconds": 3.0, "poll_seconds": 0.2},
    "workers": {"device": "cpu"},
    "rules": [RULE],
}

#: Case -> outcome, filled by the tests as they assert (printed for the closing note).
OUTCOMES: dict[str, str] = {}

Series = list[Dataset]


# -- building cases -----------------------------------------------------------------------


def chest(seed: int, slices: int = 30) -> Series:
    """A small chest CT that ``ct_lungs`` processes (30 slices of 96 x 96, 3 mm)."""
    return make_chest_ct(
        n_slices=slices, rows=96, columns=96, seed=seed, series_description="Chest hostile"
    )[0]


def renumber(datasets: Series) -> Series:
    """Copies with new study, series and instance UIDs (keeps everything else)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def edit(seed: int, change: Callable[[Series], None], slices: int = 30) -> Series:
    datasets = chest(seed, slices)
    change(datasets)
    return datasets


def _without(keyword: str, index: int | None) -> Callable[[Series], None]:
    def change(datasets: Series) -> None:
        for ds in datasets if index is None else [datasets[index]]:
            delattr(ds, keyword)

    return change


def _tilted(datasets: Series) -> None:
    """Gantry tilt as scanners store it: axial IOP, positions sheared along y per slice."""
    for ds in datasets:
        z = float(ds.ImagePositionPatient[2])
        ds.GantryDetectorTilt = "20"
        ds.ImagePositionPatient[1] = (
            f"{float(ds.ImagePositionPatient[1]) + z * np.tan(np.radians(20)):.4f}"
        )


def _rotated_slice(datasets: Series) -> None:
    datasets[7].ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]


def _localizer(datasets: Series) -> None:
    """The first of 31 slices becomes a coronal localizer (30 axial slices stay)."""
    scout = datasets[0]
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    scout.ImagePositionPatient = ["0", "0", "0"]


def _mixed_size(datasets: Series) -> None:
    (big,) = make_chest_ct(n_slices=1, rows=112, columns=112, seed=5)[0]
    ds = datasets[5]
    for keyword in ("Rows", "Columns", "PixelData"):
        setattr(ds, keyword, getattr(big, keyword))


def _duplicate_position(datasets: Series) -> None:
    """A second image at slice 5's position (another SOP Instance UID once renumbered)."""
    datasets.insert(6, copy.deepcopy(datasets[5]))


def _drop_slice(datasets: Series) -> None:
    del datasets[10]


def _non_uniform(datasets: Series) -> None:
    for ds in datasets[:15]:  # instance 1 is the most superior: the top half moves up 1 mm
        ds.ImagePositionPatient[2] = f"{float(ds.ImagePositionPatient[2]) + 1.0:g}"


def _mr_class(datasets: Series) -> None:
    for ds in datasets:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE


def _charset(charset: str, name: str) -> Callable[[Series], None]:
    def change(datasets: Series) -> None:
        for ds in datasets:
            ds.SpecificCharacterSet = charset
            ds.PatientName = name
            ds.StudyDescription = name.split("=")[0].replace("^", " ")

    return change


def _long_values(datasets: Series) -> None:
    for ds in datasets:
        ds.StudyDescription = "x" * 10_000  # LO: 64 characters at most
        ds.ImageComments = "long " * 4_000  # LT: 10240 characters at most
        ds.add_new(0x00091010, "LO", "private " * 1000)


def _private_50mb(datasets: Series) -> None:
    block = datasets[3].private_block(0x0011, "HOSTILE TEST", create=True)
    block.add_new(0x01, "OB", bytes(50 * 1024 * 1024))


def enhanced_ct(seed: int) -> Series:
    """One Enhanced CT Image Storage instance holding a 20-slice chest as frames."""
    source = chest(seed)
    first = source[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in (
        "SpecificCharacterSet", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
        "SeriesDescription", "PatientName", "PatientID", "StudyDate", "StudyTime",
        "FrameOfReferenceUID", "SamplesPerPixel", "PhotometricInterpretation", "Rows",
        "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    ):  # fmt: skip
        setattr(ds, keyword, getattr(first, keyword))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(source)
    shared = Dataset()
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for slice_ in source:
        position, group = Dataset(), Dataset()
        position.ImagePositionPatient = slice_.ImagePositionPatient
        group.PlanePositionSequence = DicomSequence([position])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = b"".join(s.PixelData for s in source)
    return [ds]


def compressed(seed: int, syntax: str) -> Series:
    """The chest series in ``syntax`` (pydicom's encoders; deflate and implicit VR by writing)."""
    datasets = chest(seed)
    for ds in datasets:
        if syntax in (DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = syntax
        elif syntax == JPEGLSNearLossless:
            ds.compress(syntax, encoding_plugin="pyjpegls", jls_error=2)
        elif syntax == JPEG2000:
            ds.compress(syntax, encoding_plugin="pylibjpeg", j2k_cr=[5])
        else:
            ds.compress(syntax)
    return datasets


def dcmtk_jpeg(seed: int, option: str, tmp: Path) -> list[Path]:
    """The chest series compressed by dcmtk's ``dcmcjpeg`` (``+eb`` on 8-bit pixels)."""
    datasets = chest(seed)
    if option == "+eb":
        datasets = to_8_bit(datasets)
    plain = write_series(datasets, tmp / f"plain{option}")
    out = []
    for path in plain:
        target = tmp / f"jpeg{option}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dcmcjpeg", option, str(path), str(target)], check=True, timeout=30)
        out.append(target)
    return out


# -- sending -------------------------------------------------------------------------------


def storescu(
    port: int, files: Sequence[Path], propose: str = "-x=", timeout: float = 180
) -> list[int]:
    """Send ``files`` in one dcmtk association proposing ``propose`` (a storescu option:
    ``-xr`` RLE…); the DIMSE status of each response."""
    result = subprocess.run(
        ["storescu", "-d", propose, "--no-halt", "-aet", "HOSTILE", "-aec", "AINODE", LOCALHOST,
         str(port), *map(str, files)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    output = result.stdout + result.stderr
    codes = [int(c, 16) for c in re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", output)]
    assert codes, output[-3000:]
    return codes


def pynetdicom_send(
    port: int, dataset: Dataset | Path | Sequence[Path], context: str, syntax: str
) -> str:
    """C-STORE one data set (or files' raw bytes) on a context the test chooses; the
    statuses (one distinct status: that one)."""
    ae = AE(ae_title="HOSTILE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(context, [syntax])
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification: the association stands
    assoc = associate(ae, LOCALHOST, port, ae_title="AINODE")
    assert assoc.is_established
    try:
        accepted = [c for c in assoc.accepted_contexts if c.abstract_syntax == context]
        if not accepted:
            (rejected,) = assoc.rejected_contexts
            return f"context rejected (result {rejected.result})"
        items = list(dataset) if isinstance(dataset, list | tuple) else [dataset]
        codes = set()
        for item in items:
            # Files go as their raw bytes after the file meta (pynetdicom does not parse them).
            _config.STORE_SEND_CHUNKED_DATASET = isinstance(item, Path)
            try:
                answer = assoc.send_c_store(item)
            finally:
                _config.STORE_SEND_CHUNKED_DATASET = False
            assert "Status" in answer, "no C-STORE response"
            codes.add(f"status 0x{int(answer.Status):04X}")
        return ", ".join(sorted(codes))
    finally:
        assoc.release()


# -- the node and its API -----------------------------------------------------------------


@dataclass
class Api:
    url: str
    token: str

    def get(self, path: str, **params: str) -> object:
        answer = httpx.get(
            f"{self.url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        answer.raise_for_status()
        return answer.json()


def api_of(node: NodeProcess) -> Api:
    db = Database(node.data_dir / "state.sqlite3")
    try:
        users = UserStore(db)
        users.add("hostile", "hostile-password-1", "viewer", time.time())
        token, _ = users.create_token("hostile", "tests", time.time())
    finally:
        db.close()
    return Api(node.url, token)


def outcome_of(api: Api, series_uid: str) -> str:
    """``processed``, ``reason: <error or skip detail>`` or ``no job`` for a series."""
    jobs = api.get("/api/jobs", series_uid=series_uid)
    assert isinstance(jobs, list)
    if not jobs:
        return "no job"
    assert len(jobs) == 1, [(j["generation"], j["state"], j["error"]) for j in jobs]
    (job,) = jobs
    detail = api.get(f"/api/jobs/{job['id']}")
    assert isinstance(detail, dict)
    if detail["state"] == "done":
        results = list(Path(detail["result_dir"]).glob("*.dcm"))
        warnings = [e["detail"] for e in detail["events"] if e["event"] == "quality_warning"]
        done = "processed" if results else "done without results"
        return "; ".join([done, *warnings])
    skipped = [e["detail"] for e in detail["events"] if e["event"] == "quality_skipped"]
    return f"reason: {detail['state']}: {detail['error'] or ''} {' '.join(skipped)}".strip()


def wait_for_jobs(api: Api, series_uids: Sequence[str], timeout: float) -> None:
    """Until every series that has a job has it finished (or failed)."""

    def finished() -> bool:
        jobs = api.get("/api/jobs", limit="5000")
        assert isinstance(jobs, list)
        mine = [j for j in jobs if j["series_uid"] in series_uids]
        return all(j["state"] in ("done", "failed", "skipped") for j in mine)

    wait_until(finished, timeout, interval=0.5, message="hostile jobs finished")


def uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- the cases -----------------------------------------------------------------------------

#: Series sent with storescu (every instance answered 0x0000): name -> (builder, outcome).
#: An outcome ``reason: …`` is matched as a regular expression against the job's state,
#: error and skip detail.
SERIES_CASES: dict[str, tuple[Callable[[int], Series], str]] = {
    "normal chest CT (first sentinel)": (chest, "processed"),
    "missing ImagePositionPatient in one slice": (
        lambda s: edit(s, _without("ImagePositionPatient", 4)),
        "reason: .*missing_slices: 1 missing.*",
    ),
    "missing PixelSpacing": (
        lambda s: edit(s, _without("PixelSpacing", None)),
        "reason: .*lacks PixelSpacing.*",
    ),
    "missing ImageOrientationPatient": (
        lambda s: edit(s, _without("ImageOrientationPatient", None)),
        "reason: .*lacks ImageOrientationPatient.*",
    ),
    "inconsistent orientation (one slice)": (
        lambda s: edit(s, _rotated_slice),
        "reason: .*mixes image orientations.*",
    ),
    "localizer inside the series": (lambda s: edit(s, _localizer, 31), "processed"),
    "mixed rows/columns": (lambda s: edit(s, _mixed_size), "reason: .*mixes image sizes.*"),
    "duplicated position": (lambda s: edit(s, _duplicate_position), "processed; .*duplicate.*"),
    "missing slice": (lambda s: edit(s, _drop_slice), "reason: .*missing_slices: 1 missing.*"),
    "non-uniform spacing": (
        lambda s: edit(s, _non_uniform),
        "reason: .*missing_slices: 1 missing.*gap of 4.00 mm.*",
    ),
    "gantry tilt 20 degrees": (
        lambda s: edit(s, _tilted),
        "reason: failed: VolumeError: slice positions drift .* gantry tilt 20 degrees.*",
    ),
    "single slice to a 3D routine": (lambda s: chest(s, 1), "reason: .*1 slices; at least 20.*"),
    "Enhanced CT (multi-frame)": (
        enhanced_ct,
        "reason: failed: VolumeError: instance .* lacks ImagePositionPatient.*",
    ),
    "CT pixels under MR Image Storage": (
        lambda s: edit(s, _mr_class),
        r"processed; sop_class: 1\.2\.840\.10008\.5\.1\.4\.1\.1\.4 \(validated on .*\)",
    ),
    "RLE Lossless": (lambda s: compressed(s, RLELossless), "processed"),
    "JPEG-LS Lossless": (lambda s: compressed(s, JPEGLSLossless), "processed"),
    "JPEG-LS Near-Lossless": (lambda s: compressed(s, JPEGLSNearLossless), "processed"),
    "JPEG 2000 Lossless": (lambda s: compressed(s, JPEG2000Lossless), "processed"),
    "JPEG 2000": (lambda s: compressed(s, JPEG2000), "processed"),
    "Deflated Explicit VR Little Endian": (
        lambda s: compressed(s, DeflatedExplicitVRLittleEndian),
        "processed",
    ),
    "Implicit VR Little Endian": (lambda s: compressed(s, ImplicitVRLittleEndian), "processed"),
    "ISO_IR 100 names": (lambda s: edit(s, _charset("ISO_IR 100", "Müller^Jürgen")), "processed"),
    "ISO 2022 IR 87 names": (
        lambda s: edit(s, _charset("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう")),
        "processed",
    ),
    "ISO_IR 192 names": (lambda s: edit(s, _charset("ISO_IR 192", "Σωκράτης^Ωμέγα")), "processed"),
    "very long values": (lambda s: edit(s, _long_values), "processed"),
    "50 MB private element": (lambda s: edit(s, _private_50mb), "processed"),
}

#: storescu's option proposing the transfer syntax of a case's files.
PROPOSE = {
    "RLE Lossless": "-xr",
    "JPEG-LS Lossless": "-xt",
    "JPEG-LS Near-Lossless": "-xu",
    "JPEG 2000 Lossless": "-xv",
    "JPEG 2000": "-xw",
    "Deflated Explicit VR Little Endian": "-xd",
    "Implicit VR Little Endian": "-xi",
}

#: dcmtk's dcmcjpeg options for the JPEG process syntaxes pydicom cannot encode, with the
#: storescu option proposing each (None: storescu has none; pynetdicom sends it).
DCMTK_JPEG = {
    "JPEG Baseline (8-bit)": ("+eb", "-xy"),
    "JPEG Extended (12-bit)": ("+ee", "-xx"),
    "JPEG Lossless SV1": ("+e1", "-xs"),
    "JPEG Lossless (process 14)": ("+el", None),
}


@pytest.mark.serial(reason="3 s quiet period: a stalled sender splits a series in two")
def test_hostile_series_and_instances_each_have_their_outcome(tmp_path: Path) -> None:
    files: dict[str, list[Path]] = {}
    expected: dict[str, str] = {}
    for seed, (name, (build, outcome)) in enumerate(SERIES_CASES.items(), start=300):
        files[name] = write_series(renumber(build(seed)), tmp_path / f"case-{seed}")
        expected[name] = outcome
    for seed, (name, (option, propose)) in enumerate(DCMTK_JPEG.items(), start=400):
        files[name] = dcmtk_jpeg(seed, option, tmp_path)
        expected[name] = "processed; bit_depth: 8 bits stored.*" if option == "+eb" else "processed"
        if propose:
            PROPOSE[name] = propose
    sentinel = write_series(renumber(chest(999)), tmp_path / "sentinel")

    # Single instances, each of a new series, sent to be refused.
    base = tmp_path / "base.dcm"
    chest(500)[0].save_as(base, enforce_file_format=True)
    raw = base.read_bytes()
    cases: dict[str, Path] = {}

    def variant(name: str, change: Callable[[Dataset], None]) -> None:
        ds = renumber([pydicom.dcmread(base)])[0]
        change(ds)
        path = tmp_path / "single" / f"{len(cases)}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        cases[name] = path

    variant("1-byte PixelData", lambda ds: setattr(ds, "PixelData", b"\x00\x00"))
    variant("missing PixelData", lambda ds: delattr(ds, "PixelData"))
    variant("missing StudyInstanceUID", lambda ds: delattr(ds, "StudyInstanceUID"))
    variant(
        "SeriesInstanceUID of 70 characters",
        lambda ds: setattr(ds, "SeriesInstanceUID", "1." + "2" * 68),
    )
    variant(
        "SeriesInstanceUID with letters", lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.abc.4")
    )
    variant("StudyInstanceUID '../..'", lambda ds: setattr(ds, "StudyInstanceUID", "../.."))
    truncated = tmp_path / "single" / "truncated-pixels.dcm"
    truncated.write_bytes(raw[: len(raw) * 2 // 3])
    cases["truncated file (in the pixel data)"] = truncated
    header_cut = tmp_path / "single" / "truncated-header.dcm"
    meta_end = raw.index(b"\x08\x00\x05\x00")  # the first data set element (0008,0005)
    header_cut.write_bytes(raw[: meta_end + 300])
    cases["truncated file (in the header)"] = header_cut
    garbage = tmp_path / "single" / "garbage.dcm"
    garbage.write_bytes(
        raw[:meta_end] + bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))
    )
    cases["garbage after the preamble and file meta"] = garbage
    instance_expected = {
        "1-byte PixelData": "status 0xC003",
        "missing PixelData": "status 0xC003",
        "missing StudyInstanceUID": "status 0xC001",
        "SeriesInstanceUID of 70 characters": "status 0xC001",
        "SeriesInstanceUID with letters": "status 0xC001",
        "StudyInstanceUID '../..'": "status 0xC001",
        "truncated file (in the pixel data)": "status 0xC003",
        "truncated file (in the header)": "status 0xC001",
        "garbage after the preamble and file meta": "status 0xC001",
        "CT data set on an MR Image Storage context": "status 0xA900",
        "unknown (private) SOP class": "context rejected (result 3)",
    }  # fmt: skip

    with NodeProcess(CONFIG, workdir=tmp_path / "node") as node:
        api = api_of(node)
        port = node.dicom_port
        found: dict[str, str] = {}
        series_of: dict[str, str] = {}
        for name, paths in files.items():
            if name in DCMTK_JPEG and name not in PROPOSE:
                syntax = str(
                    pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
                )
                assert pynetdicom_send(port, paths, CT_IMAGE, syntax) == "status 0x0000", name
            else:
                codes = storescu(port, paths, PROPOSE.get(name, "-x="))
                assert codes == [0] * len(paths), (name, codes)
            series_of[name] = str(
                pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
            )
        for name, path in cases.items():
            if name.startswith(("truncated", "garbage")):
                found[name] = pynetdicom_send(port, path, CT_IMAGE, str(ExplicitVRLittleEndian))
            else:
                (code,) = storescu(port, [path])
                found[name] = f"status 0x{code:04X}"
        # The request says MR Image Storage (from the file meta), the data set says CT.
        mislabelled = renumber([pydicom.dcmread(base)])[0]
        mislabelled_path = tmp_path / "single" / "mislabelled.dcm"
        mislabelled.save_as(mislabelled_path, enforce_file_format=True)
        encoded = mislabelled_path.read_bytes()  # the same length: the meta stays valid
        mislabelled_path.write_bytes(encoded.replace(CT_IMAGE.encode(), MR_IMAGE.encode(), 1))
        found["CT data set on an MR Image Storage context"] = pynetdicom_send(
            port, mislabelled_path, MR_IMAGE, str(ExplicitVRLittleEndian)
        )
        private = renumber([pydicom.dcmread(base)])[0]
        private.SOPClassUID = "1.2.826.0.1.3680043.8.498.1.1"
        found["unknown (private) SOP class"] = pynetdicom_send(
            port, private, "1.2.826.0.1.3680043.8.498.1.1", str(ExplicitVRLittleEndian)
        )

        # The same SOP Instance UID with other pixels: the first copy is kept, logged.
        first = files["normal chest CT (first sentinel)"][0]
        before = next((node.data_dir / "spool").rglob(f"{uid(first)}.dcm")).read_bytes()
        other = pydicom.dcmread(first)
        other.PixelData = bytes(len(other.PixelData))
        other_path = tmp_path / "other-copy.dcm"
        other.save_as(other_path, enforce_file_format=True)
        assert storescu(port, [other_path]) == [0]
        after = next((node.data_dir / "spool").rglob(f"{uid(first)}.dcm")).read_bytes()
        assert after == before
        assert f"duplicate instance ignored sop_uid={uid(first)}" in node.log_text()
        found["same SOP Instance UID, other content"] = "status 0x0000, first copy kept, logged"
        instance_expected["same SOP Instance UID, other content"] = found[
            "same SOP Instance UID, other content"
        ]

        wait_for_jobs(api, list(series_of.values()), timeout=240)
        for name, series_uid in series_of.items():
            try:
                found[name] = outcome_of(api, series_uid)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None

        # The node still processes a normal series.
        assert storescu(port, sentinel) == [0] * len(sentinel)
        sentinel_uid = str(pydicom.dcmread(sentinel[0], stop_before_pixels=True).SeriesInstanceUID)
        wait_until(lambda: bool(api.get("/api/jobs", series_uid=sentinel_uid)), 60, message="job")
        wait_for_jobs(api, [sentinel_uid], timeout=120)
        found["normal chest CT (last sentinel)"] = outcome_of(api, sentinel_uid)
        expected["normal chest CT (last sentinel)"] = "processed"
        log = node.log_text()
        assert "Traceback" not in log, log[-4000:]
        # Every refusal is logged with the SOP Instance UID the request named, and why.
        for name, path in cases.items():
            if found[name] != "status 0x0000":
                sop_uid = read_file_meta_info(path).MediaStorageSOPInstanceUID
                code = found[name].removeprefix("status ")
                assert f"C-STORE refused status={code} sop_uid={sop_uid} reason=" in log, name

    OUTCOMES.update(found)
    table = "\n".join(f"{name}: {found[name]}" for name in found)
    print(table)
    for name, outcome in expected.items():  # regular expressions
        assert re.fullmatch(outcome, found[name]), f"{name}: {found[name]!r}\n{table}"
    for name, outcome in instance_expected.items():
        assert found[name] == outcome, f"{name}: {found[name]!r}\n{table}"


# -- volume: many instances, one huge instance --------------------------------------------

MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
#: 480 frames of 512 x 512 x 16 bits: a valid 240 MiB instance.
HUGE_FRAMES = 480


def secondary_capture(rows: int, columns: int, frames: int, pixels: bytes | None = None) -> Dataset:
    """A Multi-frame Grayscale Word Secondary Capture instance (modality OT: no rule)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_WORD_SC
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality, ds.PatientName, ds.PatientID = "OT", "HOSTILE^VOLUME", "HOSTILE0001"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels if pixels is not None else bytes(rows * columns * frames * 2)
    return ds


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.mark.serial(reason="node peak RSS; 240 MiB per copy beside other workers")
def test_2000_instances_and_a_240_mib_instance_are_stored_without_blowing_up(
    tmp_path: Path,
) -> None:
    many_dir = tmp_path / "many"
    many_dir.mkdir()
    template = secondary_capture(16, 16, 1)
    many = []
    for number in range(1, 2001):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = number
        path = many_dir / f"{number:04d}.dcm"
        template.save_as(path, enforce_file_format=True)
        many.append(path)
    huge = secondary_capture(512, 512, HUGE_FRAMES)
    huge_path = tmp_path / "huge.dcm"
    huge.save_as(huge_path, enforce_file_format=True)
    del huge
    sentinel = write_series(renumber(chest(998)), tmp_path / "sentinel")

    with NodeProcess(CONFIG, workdir=tmp_path / "node") as node:
        api = api_of(node)
        assert node.pid is not None
        before_mb = peak_rss_mb(node.pid)
        started = time.monotonic()
        assert storescu(node.dicom_port, many, timeout=300) == [0] * len(many)
        many_seconds = time.monotonic() - started
        started = time.monotonic()
        assert storescu(node.dicom_port, [huge_path], timeout=300) == [0]
        huge_seconds = time.monotonic() - started
        peak_mb = peak_rss_mb(node.pid)

        many_uid = str(template.SeriesInstanceUID)
        huge_uid = str(pydicom.dcmread(huge_path, stop_before_pixels=True).SeriesInstanceUID)

        def complete(series_uid: str) -> bool:
            return api.get(f"/api/series/{series_uid}")["state"] != "receiving"  # type: ignore[index]

        wait_until(lambda: complete(many_uid) and complete(huge_uid), 60, message="complete")
        many_series = api.get(f"/api/series/{many_uid}")
        huge_series = api.get(f"/api/series/{huge_uid}")
        assert isinstance(many_series, dict) and isinstance(huge_series, dict)
        assert many_series["instance_count"] == 2000 and many_series["jobs"] == []
        assert huge_series["instance_count"] == 1 and huge_series["jobs"] == []
        (spooled,) = (node.data_dir / "spool").rglob(f"{huge_uid}/*.dcm")
        assert spooled.stat().st_size >= 512 * 512 * HUGE_FRAMES * 2
        assert len(list((node.data_dir / "spool").rglob(f"{many_uid}/*.dcm"))) == 2000

        assert storescu(node.dicom_port, sentinel) == [0] * len(sentinel)
        sentinel_uid = str(pydicom.dcmread(sentinel[0], stop_before_pixels=True).SeriesInstanceUID)
        wait_until(lambda: bool(api.get("/api/jobs", series_uid=sentinel_uid)), 60, message="job")
        wait_for_jobs(api, [sentinel_uid], timeout=120)
        assert outcome_of(api, sentinel_uid) == "processed"
        assert "Traceback" not in node.log_text(), node.log_text()[-4000:]
    size_mb = huge_path.stat().st_size / 2**20
    print(
        f"2000 instances: {many_seconds:.1f} s ({2000 / many_seconds:.0f}/s); "
        f"{size_mb:.0f} MiB instance: {huge_seconds:.1f} s; node peak RSS "
        f"{before_mb:.0f} MB before, {peak_mb:.0f} MB after"
    )
    OUTCOMES["2000 instances in one series"] = "stored (2000 rows, 2000 files), no rule: no job"
    OUTCOMES[f"one {size_mb:.0f} MiB instance"] = "stored, no rule: no job"
    # Receiving the instance holds it decoded and encoded: a few copies, not more.
    assert peak_mb - before_mb < 6 * size_mb, (before_mb, peak_mb)
