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

import io
import itertools
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.contract.header import parse_header
from node.errors import VolumeError

_PIXEL_DATA = 0x7FE00010
#: Decoder threads for pixel data pydicom must decode (compressed, big-endian...).
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
#: Threads reading native pixel data into the volume, each a share of at least
#: ``FILL_MIN_SLICES`` slices.
FILL_THREADS = max(1, min(4, os.cpu_count() or 1))
FILL_MIN_SLICES = 64


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


#: Bytes read for a header at first; a longer one is parsed from the file.
HEADER_CHUNK = 16 * 1024
_NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_PIXEL_DATA_TAG = struct.pack("<HH", 0x7FE0, 0x0010)


def read_source(path: Path) -> SourceFile:
    """Parse ``path``'s header once; :class:`VolumeError` naming it if it cannot be.

    The header of a native little-endian file is parsed from its first
    :data:`HEADER_CHUNK` bytes, read at once (the file is not read element by element);
    a longer header, another transfer syntax or a file pydicom stops reading elsewhere
    than at its Pixel Data is parsed from the file itself.
    """
    try:
        with open(path, "rb") as handle:
            chunk = handle.read(HEADER_CHUNK)
            source = _source_from_chunk(path, chunk, os.fstat(handle.fileno()).st_size)
            if source is not None:
                return source
            handle.seek(0)
            header = pydicom.dcmread(handle, stop_before_pixels=True)
            offset = _native_pixel_offset(handle, header)
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise VolumeError(f"cannot read {path}: {exc}") from exc
    return SourceFile(path, header, offset)


def _source_from_chunk(path: Path, chunk: bytes, size: int) -> SourceFile | None:
    """The source of a native file whose header and Pixel Data element start lie in
    ``chunk`` (the file's first bytes), else None."""
    parsed = parse_header(chunk)
    if parsed is not None:
        header, start = parsed
        if chunk[start : start + 4] == _PIXEL_DATA_TAG and start + 12 <= len(chunk):
            element = chunk[start : start + 12]
            return SourceFile(path, header, _pixel_offset(header, element, start, size))
    buffer = io.BytesIO(chunk)
    try:
        header = pydicom.dcmread(buffer, stop_before_pixels=True)
    except Exception:  # the chunk ends inside the header, or the file is corrupt
        return None
    meta = getattr(header, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in _NATIVE_SYNTAXES:
        return None
    start = buffer.tell()  # pydicom stops at the Pixel Data element's tag
    if chunk[start : start + 4] != _PIXEL_DATA_TAG or start + 12 > len(chunk):
        return None  # stopped elsewhere (the chunk's end, no pixel data)
    return SourceFile(path, header, _pixel_offset(header, chunk[start : start + 12], start, size))


_U16 = struct.Struct("<H")


def _unsigned(header: Dataset, tag: int, default: int | None = None) -> int:
    """``int(header[tag].value)`` of a US element (``default`` when absent; KeyError
    without one), its raw little-endian value read as it is, without pydicom converting
    it (the pixel module's US elements are read for every file of every series)."""
    if tag not in header:
        if default is None:
            raise KeyError(tag)
        return default
    elem = header.get_item(tag)
    if (
        isinstance(elem, RawDataElement)
        and elem.length == 2
        and elem.is_little_endian
        and elem.VR in (None, "US")
        and isinstance(elem.value, bytes)
    ):
        return int(_U16.unpack(elem.value)[0])
    return int(header[tag].value)


def _native_dtype(header: Dataset) -> np.dtype | None:
    """The dtype of ``header``'s pixels when they can be read as stored, else None."""
    meta = getattr(header, "file_meta", None)
    syntax = None if meta is None else meta.get("TransferSyntaxUID")
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    try:
        if _unsigned(header, 0x00280002, 1) != 1 or int(header.get("NumberOfFrames", 1)) != 1:
            return None
        allocated = _unsigned(header, 0x00280100)
        stored = _unsigned(header, 0x00280101, allocated)
        signed = _unsigned(header, 0x00280103) == 1
        _unsigned(header, 0x00280010), _unsigned(header, 0x00280011)  # Rows, Columns
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if allocated not in (8, 16, 32) or not 0 < stored <= allocated:
        return None
    return np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")


def _native_pixel_offset(handle: object, header: Dataset) -> int | None:
    """Where the Pixel Data value starts, if it is native and holds exactly one image."""
    if _native_dtype(header) is None:
        return None
    assert hasattr(handle, "tell") and hasattr(handle, "read")
    start = handle.tell()  # pydicom stops at the Pixel Data element's tag
    size = os.fstat(handle.fileno()).st_size  # type: ignore[attr-defined]
    return _pixel_offset(header, handle.read(12), start, size)


def _pixel_offset(header: Dataset, element: bytes, start: int, size: int) -> int | None:
    """Where the Pixel Data value starts when the element at ``start`` (its first bytes
    ``element``, in a file of ``size`` bytes) is native and holds exactly one image."""
    dtype = _native_dtype(header)
    if dtype is None:
        return None
    implicit = header.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    element = element[: 8 if implicit else 12]
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
    if size != value_at + length:
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


def _read_native(source: SourceFile, buffer: np.ndarray | None = None) -> np.ndarray:
    """The file's stored pixels, read with one ``readinto`` (into ``buffer`` when it has
    their shape and dtype)."""
    header = source.header
    dtype = _native_dtype(header)
    assert dtype is not None and source.pixel_offset is not None
    shape = (int(header.Rows), int(header.Columns))
    if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
        buffer = np.empty(shape, dtype=dtype)
    with open(source.path, "rb") as handle:
        handle.seek(source.pixel_offset)
        if handle.readinto(buffer.data.cast("B")) != buffer.nbytes:
            raise VolumeError(f"cannot read {source.path}: pixel data ends early")
    return _corrected(buffer, header)


def read_whole(path: Path) -> Dataset:
    """The whole file, pixel data included; :class:`VolumeError` naming it if unreadable."""
    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise VolumeError(f"cannot read {path}: {exc}") from exc


def _rescale_into(out: np.ndarray, pixels: np.ndarray, header: Dataset) -> None:
    """``out[...] = pixels * slope + intercept`` in float32, as the stacked path computes it
    (``pixels.astype(float32) * slope + intercept``): the cast is the ufunc's own, and a
    slope of 1 (``x * 1 == x``) is not multiplied."""
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = np.float32(float(header.get("RescaleIntercept", 0.0) or 0.0))
    if slope == 1.0:
        np.add(pixels, intercept, out=out, dtype=np.float32)
        return
    np.multiply(pixels, np.float32(slope), out=out, dtype=np.float32)
    np.add(out, intercept, out=out)


def _fill_native(sources: Sequence[SourceFile], indices: Sequence[int], out: np.ndarray) -> None:
    """``out[k]`` = source ``k``'s rescaled native pixels, for each ``k`` of ``indices``."""
    buffer: np.ndarray | None = None
    for k in indices:
        buffer = _read_native(sources[k], buffer)
        _rescale_into(out[k], buffer, sources[k].header)


def read_slice(
    source: SourceFile, out: np.ndarray, buffer: np.ndarray | None = None
) -> np.ndarray | None:
    """Write the file's rescaled pixels into ``out`` (float32, the image's shape): the
    values :func:`fill_slices` writes into its slice. ``buffer``, reused when it has the
    stored pixels' shape and dtype, holds them on the way (native files); the buffer
    used is returned for the next call."""
    if source.pixel_offset is not None:
        buffer = _read_native(source, buffer)
        _rescale_into(out, buffer, source.header)
        return buffer
    dataset = read_whole(source.path)
    _rescale_into(out, np.asarray(dataset.pixel_array), dataset)
    return buffer


def fill_slices(sources: Sequence[SourceFile], out: np.ndarray) -> list[Dataset]:
    """Write image ``k``'s rescaled pixels into ``out[k]``; return each image's header.

    Files without a native pixel offset are decoded by pydicom on :data:`DECODE_THREADS`
    threads; their header is then the one of that complete read (it keeps any element
    after the pixel data), else the one :func:`read_source` parsed.
    """
    headers = [source.header for source in sources]
    decode = [k for k, source in enumerate(sources) if source.pixel_offset is None]
    native = [k for k, source in enumerate(sources) if source.pixel_offset is not None]
    parts = min(FILL_THREADS, max(1, len(native) // FILL_MIN_SLICES))
    if parts > 1:
        # Contiguous shares, one per thread; file reads and numpy release the GIL.
        bounds = np.linspace(0, len(native), parts + 1).astype(int)
        with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="fill") as pool:
            shares = [native[a:b] for a, b in itertools.pairwise(bounds)]
            for done in [pool.submit(_fill_native, sources, share, out) for share in shares]:
                done.result()
    else:
        _fill_native(sources, native, out)
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
