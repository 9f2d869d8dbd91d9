"""Reading a series from files (``load_volume``): the pixels read in place or decoded on a
thread pool give exactly the volume ``assemble_volume`` builds from fully parsed files."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from node.contract import header, pixels
from node.contract.assemble import assemble_volume, load_volume
from node.contract.pixels import fill_slices, read_source
from node.contract.volume import Volume
from node.errors import VolumeError
from tools.synthetic.chest_ct import make_chest_ct, write_series


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    datasets, _ = make_chest_ct(n_slices=12, rows=48, columns=48, seed=21)
    return datasets


def _reference(paths: list[Path]) -> Volume:
    return assemble_volume(pydicom.dcmread(path) for path in paths)


def _assert_identical(loaded: Volume, reference: Volume) -> None:
    assert loaded.array.dtype == reference.array.dtype == np.float32
    assert np.array_equal(loaded.array, reference.array)
    assert loaded.spacing == reference.spacing
    assert np.array_equal(loaded.affine, reference.affine)
    assert len(loaded.datasets) == len(reference.datasets)
    for ours, theirs in zip(loaded.datasets, reference.datasets, strict=True):
        assert ours == theirs
        assert ours.file_meta == theirs.file_meta
        assert "PixelData" not in ours


def _write(datasets: list[Dataset], folder: Path) -> list[Path]:
    # Shuffled on disk: the volume is sorted whatever the file order.
    paths = write_series(datasets, folder)
    return paths[::-1]


def test_uncompressed_little_endian_is_read_in_place_and_identical(series, tmp_path):
    paths = _write(series, tmp_path)
    assert all(read_source(path).pixel_offset is not None for path in paths)
    _assert_identical(load_volume(paths), _reference(paths))


@pytest.mark.parametrize("signed", [0, 1])
def test_unused_high_bits_are_corrected_as_pydicom_does(series, tmp_path, signed):
    """12 bits stored in 16 with garbage above them, implicit VR: read in place, and the
    values are pydicom's (masked, or sign-extended from bit 11)."""
    rng = np.random.default_rng(signed)
    changed = []
    for ds in series:
        ds = copy.deepcopy(ds)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, signed
        raw = rng.integers(0, 2**16, size=(int(ds.Rows), int(ds.Columns)), dtype=np.uint16)
        ds.PixelData = raw.astype("<u2").tobytes()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        changed.append(ds)
    paths = _write(changed, tmp_path)
    assert all(read_source(path).pixel_offset is not None for path in paths)
    loaded = load_volume(paths)
    _assert_identical(loaded, _reference(paths))
    slope = float(changed[0].RescaleSlope)
    intercept = float(changed[0].RescaleIntercept)
    stored = np.rint((loaded.array - intercept) / slope)
    low, high = (-2048, 2047) if signed else (0, 4095)
    assert low <= stored.min() and stored.max() <= high
    assert (stored.min() < 0) == bool(signed)


def _saved_as(series: list[Dataset], folder: Path, syntax: str) -> list[Path]:
    folder.mkdir()
    paths = []
    for index, ds in enumerate(series):
        ds = copy.deepcopy(ds)
        path = folder / f"{index:04d}.dcm"
        if syntax == RLELossless:
            ds.compress(RLELossless)
            ds.save_as(path, enforce_file_format=True)
        elif syntax == ExplicitVRBigEndian:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
            kind = "i" if int(ds.PixelRepresentation) else "u"
            ds.PixelData = np.frombuffer(ds.PixelData, f"<{kind}2").astype(f">{kind}2").tobytes()
            ds.save_as(path, implicit_vr=False, little_endian=False, enforce_file_format=True)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths[::-1]


@pytest.mark.parametrize(
    "syntax", [RLELossless, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_other_transfer_syntaxes_are_decoded_on_the_pool_and_identical(
    series, tmp_path, syntax, monkeypatch
):
    paths = _saved_as(series, tmp_path / "files", syntax)
    sources = [read_source(path) for path in paths]
    assert all(source.pixel_offset is None for source in sources)
    threads: set[str] = set()
    read_whole = pixels.read_whole

    def spy(path: Path) -> Dataset:  # records the decoding thread, reads for real
        threads.add(threading.current_thread().name)
        return read_whole(path)

    monkeypatch.setattr(pixels, "read_whole", spy)
    out = np.empty((len(sources), int(series[0].Rows), int(series[0].Columns)), np.float32)
    headers = fill_slices(sources, out)
    assert threads and all(name.startswith("decode") for name in threads)
    assert all("PixelData" in header for header in headers)  # the complete reads
    _assert_identical(load_volume(paths), _reference(paths))


def test_elements_after_the_pixel_data_fall_back_and_are_kept(series, tmp_path):
    padded = []
    for ds in series:
        ds = copy.deepcopy(ds)
        ds.add_new(0xFFFCFFFC, "OB", b"\0\0\0\0")  # Data Set Trailing Padding
        padded.append(ds)
    paths = _write(padded, tmp_path)
    assert all(read_source(path).pixel_offset is None for path in paths)
    loaded = load_volume(paths)
    _assert_identical(loaded, _reference(paths))
    assert 0xFFFCFFFC in loaded.datasets[0]


def test_a_truncated_file_is_decoded_by_pydicom_and_its_error_kept(series, tmp_path):
    paths = _write(series, tmp_path)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 100])
    assert read_source(paths[2]).pixel_offset is None
    with pytest.raises(Exception) as caught:
        _reference(paths)
    with pytest.raises(type(caught.value)):
        load_volume(paths)


def test_unreadable_header_is_named(series, tmp_path):
    paths = _write(series, tmp_path)
    paths[0].write_bytes(b"not dicom")
    with pytest.raises(VolumeError, match=paths[0].name):
        load_volume(paths)


def test_a_header_longer_than_the_first_read_is_parsed_from_the_file(series, tmp_path):
    long = []
    for ds in series:
        ds = copy.deepcopy(ds)
        ds.ImageComments = "x" * (pixels.HEADER_CHUNK + 100)  # pushes the pixels past it
        long.append(ds)
    paths = _write(long, tmp_path)
    assert all(read_source(path).pixel_offset is not None for path in paths)
    loaded = load_volume(paths)
    _assert_identical(loaded, _reference(paths))
    assert loaded.datasets[0].ImageComments == long[0].ImageComments


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, 0.0), (0.5, -3.25), (2.75, 100.5)])
def test_rescaled_values_are_those_of_the_stacked_path(series, tmp_path, slope, intercept):
    changed = []
    for ds in series:
        ds = copy.deepcopy(ds)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        changed.append(ds)
    paths = _write(changed, tmp_path)
    _assert_identical(load_volume(paths), _reference(paths))


def _shipped_files() -> list[Path]:
    """pydicom's own test files (those installed with it; nothing downloaded)."""
    return sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))


#: Shipped files that load today, read in place or decoded (the rest need decoders CI
#: may lack, or are not one image per file).
_MUST_LOAD = {
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_padded.dcm",
    "MR_small_RLE.dcm",
    "image_dfl.dcm",
    "rtdose_1frame.dcm",
    "examples_overlay.dcm",
    "SC_rgb_small_odd.dcm",
}


def test_pydicoms_shipped_files_load_as_before(tmp_path):
    """Every shipped file that ``load_volume`` reads gives the volume and headers of the
    whole-file read (native ones read in place, the others decoded)."""
    loaded = set()
    for index, shipped in enumerate(_shipped_files()):
        path = tmp_path / f"{index:03d}.dcm"
        path.write_bytes(shipped.read_bytes())
        try:
            volume = load_volume([path])
        except Exception:  # not one volume (no pixels, no decoder...)
            continue
        _assert_identical(volume, _reference([path]))
        loaded.add(shipped.name)
    assert loaded >= _MUST_LOAD, _MUST_LOAD - loaded


def _same_header(ours: Dataset, theirs: Dataset) -> None:
    """The same raw elements (undecoded), file meta, preamble and original encoding."""
    assert list(ours._dict) == list(theirs._dict)
    for tag, element in theirs._dict.items():
        assert tuple(ours._dict[tag]) == tuple(element), tag
    assert ours.file_meta == theirs.file_meta
    for attribute in ("preamble", "_read_charset", "_read_implicit", "_read_little"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, "1.2.840.10008.1.2.1"])
def test_headers_parsed_from_the_first_bytes_are_pydicoms(series, tmp_path, syntax):
    """The quick header parse gives pydicom's raw elements for the phantom (Explicit and
    Implicit VR, a specific character set) and for every shipped file it takes; what it
    does not take (sequences of undefined length, other syntaxes...) is left to pydicom."""
    changed = []
    for ds in series:
        ds = copy.deepcopy(ds)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jörg"
        changed.append(ds)
    paths = _write(changed, tmp_path / "phantom")
    for path in paths:
        parsed = header.parse_header(path.read_bytes()[: pixels.HEADER_CHUNK])
        assert parsed is not None
        _same_header(parsed[0], pydicom.dcmread(path, stop_before_pixels=True))
    loaded = load_volume(paths)
    _assert_identical(loaded, _reference(paths))
    assert str(loaded.datasets[0].PatientName) == "Müller^Jörg"
    taken = 0
    for shipped in _shipped_files():
        parsed = header.parse_header(shipped.read_bytes()[: pixels.HEADER_CHUNK])
        if parsed is not None:
            _same_header(parsed[0], pydicom.dcmread(shipped, stop_before_pixels=True))
            taken += 1
    assert taken >= 10, taken


def test_native_pixels_read_on_several_threads_are_identical(series, tmp_path, monkeypatch):
    paths = _write(series, tmp_path)
    shares: list[tuple[str, list[int]]] = []
    fill_native = pixels._fill_native

    def spy(sources, indices, out):  # records each share and its thread, reads for real
        shares.append((threading.current_thread().name, list(indices)))
        fill_native(sources, indices, out)

    monkeypatch.setattr(pixels, "_fill_native", spy)
    monkeypatch.setattr(pixels, "FILL_THREADS", 3)
    monkeypatch.setattr(pixels, "FILL_MIN_SLICES", 4)  # 12 slices: shares of 4
    _assert_identical(load_volume(paths), _reference(paths))
    assert sorted(indices for _, indices in shares) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert all(name.startswith("fill") for name, _ in shares)


@pytest.mark.parametrize("implicit", [False, True])
def test_unsigned_reads_raw_us_values_as_pydicom_converts_them(series, tmp_path, implicit):
    ds = copy.deepcopy(series[0])
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ds.file_meta.TransferSyntaxUID
    )
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = pydicom.dcmread(path, stop_before_pixels=True)
    converted = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"):
        tag = int(pydicom.datadict.tag_for_keyword(keyword))
        assert isinstance(raw.get_item(tag), pydicom.dataelem.RawDataElement)
        assert pixels._unsigned(raw, tag) == int(converted[keyword].value)
        assert isinstance(raw.get_item(tag), pydicom.dataelem.RawDataElement)  # left raw
        assert pixels._unsigned(converted, tag) == int(converted[keyword].value)  # decoded
    assert pixels._unsigned(raw, 0x00280002, 1) == int(raw.SamplesPerPixel)
    del raw.SamplesPerPixel
    assert pixels._unsigned(raw, 0x00280002, 1) == 1
    with pytest.raises(KeyError):
        pixels._unsigned(raw, 0x00280002)
    assert pixels._native_dtype(raw) == np.dtype("<i2" if int(ds.PixelRepresentation) else "<u2")
