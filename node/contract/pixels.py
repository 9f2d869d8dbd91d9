"""Reading a series' files for a volume: each header parsed once, pixels read into place.

:func:`read_source` parses a file's header only (``stop_before_pixels``) and notes where
its Pixel Data value starts. :func:`fill_slices` then writes each image's rescaled
pixels into its slice of a preallocated ``float32`` array: native little-endian pixel
data is read straight from the file into a buffer with one ``readinto`` (no pydicom
dataset, no intermediate copy of the element); anything else (compressed, big-endian,
deflated, multi-frame, odd lengths, elements after the pixel data) is decoded by pydicom
as before, on a thread pool. Either way the values are those of ``ds.pixel_array``
(unused high bits corrected as pydicom does) rescaled exactly as
:func:`~node.contract.assemble.assemble_volume` does.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.errors import VolumeError

_PIXEL_DATA = 0x7FE00010
#: Decoder threads for pixel data pydicom must decode (compressed, big-endian...).
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class SourceFile:
    """A file's header (no pixel data) and where its native pixel bytes are.

    Attributes
    ----------
    path
        The file.
    header
        Every element before the Pixel Data, with the file meta information.
    pixel_offset
        File offset of the Pixel Data value when it can be read as it is (native,
        little-endian, one frame, the expected length, nothing after it); None when
        pydicom must decode it.
    """

    path: Path
    header: Dataset
    pixel_offset: int | None


def read_source(path: Path) -> SourceFile:
    """Parse ``path``'s header once; :class:`VolumeError` naming it if it cannot be."""
    try:
        with open(path, "rb") as handle:
            header = pydicom.dcmread(handle, stop_before_pixels=True)
            offset = _native_pixel_offset(handle, header)
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise VolumeError(f"cannot read {path}: {exc}") from exc
    return SourceFile(path, header, offset)


def _native_dtype(header: Dataset) -> np.dtype | None:
    """The dtype of ``header``'s pixels when they can be read as stored, else None."""
    meta = getattr(header, "file_meta", None)
    syntax = None if meta is None else meta.get("TransferSyntaxUID")
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    try:
        if int(header.get("SamplesPerPixel", 1)) != 1 or int(header.get("NumberOfFrames", 1)) != 1:
            return None
        allocated = int(header.BitsAllocated)
        stored = int(header.get("BitsStored", allocated))
        signed = int(header.PixelRepresentation) == 1
        int(header.Rows), int(header.Columns)
    except (AttributeError, TypeError, ValueError):
        return None
    if allocated not in (8, 16, 32) or not 0 < stored <= allocated:
        return None
    return np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")


def _native_pixel_offset(handle: object, header: Dataset) -> int | None:
    """Where the Pixel Data value starts, if it is native and holds exactly one image."""
    dtype = _native_dtype(header)
    if dtype is None:
        return None
    assert hasattr(handle, "tell") and hasattr(handle, "read")
    start = handle.tell()  # pydicom stops at the Pixel Data element's tag
    implicit = header.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    element = handle.read(8 if implicit else 12)
    if len(element) < 8:
        return None
    group, elem = struct.unpack("<HH", element[:4])
    if (group << 16 | elem) != _PIXEL_DATA:
        return None
    if implicit:
        (length,) = struct.unpack("<I", element[4:8])
    else:
        if len(element) < 12 or element[4:6] not in (b"OW", b"OB"):
            return None
        (length,) = struct.unpack("<I", element[8:12])
    expected = int(header.Rows) * int(header.Columns) * dtype.itemsize
    # An odd 8-bit image is padded to an even length; anything else goes to pydicom.
    if length == 0xFFFFFFFF or length not in (expected, expected + (expected & 1)):
        return None
    value_at = start + len(element)
    if os.fstat(handle.fileno()).st_size != value_at + length:  # type: ignore[attr-defined]
        return None  # truncated, or elements after the pixel data
    return value_at


def _corrected(pixels: np.ndarray, header: Dataset) -> np.ndarray:
    """Unused high bits corrected as pydicom does (shift left, shift back)."""
    allocated = int(header.BitsAllocated)
    shift = allocated - int(header.get("BitsStored", allocated))
    if shift:
        np.left_shift(pixels, shift, out=pixels)
        np.right_shift(pixels, shift, out=pixels)
    return pixels


def _read_native(source: SourceFile) -> np.ndarray:
    header = source.header
    dtype = _native_dtype(header)
    assert dtype is not None and source.pixel_offset is not None
    pixels = np.empty((int(header.Rows), int(header.Columns)), dtype=dtype)
    with open(source.path, "rb") as handle:
        handle.seek(source.pixel_offset)
        if handle.readinto(pixels.data.cast("B")) != pixels.nbytes:
            raise VolumeError(f"cannot read {source.path}: pixel data ends early")
    return _corrected(pixels, header)


def read_whole(path: Path) -> Dataset:
    """The whole file, pixel data included; :class:`VolumeError` naming it if unreadable."""
    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise VolumeError(f"cannot read {path}: {exc}") from exc


def _rescale_into(out: np.ndarray, pixels: np.ndarray, header: Dataset) -> None:
    """``out[...] = pixels * slope + intercept`` in float32, as the stacked path computes it."""
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    np.multiply(pixels.astype(np.float32, copy=False), np.float32(slope), out=out)
    np.add(out, np.float32(intercept), out=out)


def fill_slices(sources: Sequence[SourceFile], out: np.ndarray) -> list[Dataset]:
    """Write image ``k``'s rescaled pixels into ``out[k]``; return each image's header.

    Files without a native pixel offset are decoded by pydicom on :data:`DECODE_THREADS`
    threads; their header is then the one of that complete read (it keeps any element
    after the pixel data), else the one :func:`read_source` parsed.
    """
    headers = [source.header for source in sources]
    decode = [k for k, source in enumerate(sources) if source.pixel_offset is None]
    for k, source in enumerate(sources):
        if source.pixel_offset is not None:
            _rescale_into(out[k], _read_native(source), source.header)
    if not decode:
        return headers

    def one(k: int) -> None:
        dataset = read_whole(sources[k].path)
        _rescale_into(out[k], np.asarray(dataset.pixel_array), dataset)
        headers[k] = dataset

    with ThreadPoolExecutor(
        max_workers=min(DECODE_THREADS, len(decode)), thread_name_prefix="decode"
    ) as pool:
        for finished in [pool.submit(one, k) for k in decode]:
            finished.result()
    return headers
