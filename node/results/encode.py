"""A result object as DICOM file bytes, equal to pydicom's ``dcmwrite`` but without its
per-element cost.

pydicom's writer re-walks every nested item at each level (``correct_ambiguous_vr``),
converts the character set per element and goes through several layers of calls per
element: about 0.1-0.3 ms each, and a 300-slice SR has ~80,000 elements, mostly in its
Image Library. :func:`encode_file` writes the same bytes (Explicit VR Little Endian, the
transfer syntax of every object the node builds) in one pass: tags, VRs, lengths and the
values of the common VRs are packed directly; any element it does not handle the way
pydicom does (a value of an unusual type, text outside the first character set, a
value too long for a 16-bit length, a raw element kept as read) is written by pydicom's
own ``write_data_element``, and an object it cannot take at all (another transfer
syntax, an ambiguous VR pydicom cannot resolve, group 0/2 elements in the data set) by
``dcmwrite`` itself.
``tests/test_encode.py`` checks the bytes against ``dcmwrite`` for every shipped result.

A value too large to hold (a 100-segment SEG's Pixel Data, its 30,000 per-frame items) can
be a :class:`Streamed` value: the writer emits its bytes chunk by chunk as the file is
written; ``dcmwrite`` (the fallback) gets it materialized.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from copy import deepcopy
from io import BytesIO
from struct import Struct, pack
from typing import Any, BinaryIO

import pydicom
from pydicom.charset import (
    convert_encodings,
    custom_encoders,
    default_encoding,
    need_tail_escape_sequence_encodings,
)
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import (
    correct_ambiguous_vr_element,
    validate_file_meta,
    write_data_element,
    write_file_meta_info,
)
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32

__all__ = ["Streamed", "encode_body", "encode_chunks", "encode_file", "iter_bytes", "write_file"]

_TAG_VR_LEN16 = Struct("<HH2sH")
_TAG_VR_LEN32 = Struct("<HH2s2xL")
_ITEM = Struct("<HHL")
_UNDEFINED = 0xFFFFFFFF
_SEQUENCE_DELIMITER = _ITEM.pack(0xFFFE, 0xE0DD, 0)
_ITEM_DELIMITER = _ITEM.pack(0xFFFE, 0xE00D, 0)
_LONG = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_AMBIGUOUS = frozenset(str(vr) for vr in AMBIGUOUS_VR)
_TEXT = frozenset({"SH", "LO", "ST", "LT", "UC", "UT"})
_STRING = frozenset({"AE", "AS", "CS", "UR", "DA", "DT", "TM"})
_NUMBERS = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_BYTES = frozenset({"OB", "OW", "OD", "OF", "OL", "OV"})
_MULTI = (MultiValue, list, tuple)
#: LUT descriptors: pydicom writes their first value as US even when the VR is SS.
_LUT_DESCRIPTORS = frozenset({0x00283002, 0x00281101, 0x00281102, 0x00281103})


_PIXEL_DATA = 0x7FE00010


def _vr_of(elem: RawDataElement) -> str:
    """The raw element's VR, from the dictionary when it was read as implicit VR."""
    if elem.VR:
        return str(elem.VR)
    try:
        return str(dictionary_VR(elem.tag))
    except KeyError:
        return "UN"


class Streamed(ABC):
    """An element value whose encoded bytes are made while the file is written.

    ``len()`` is the length of the encoded value (even); :meth:`chunks` yields those
    bytes in order, each call anew; :meth:`materialize` is the value as pydicom holds it
    (``bytes`` for OB/OW, a list of items for SQ), for ``dcmwrite`` and readers.
    """

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def chunks(self) -> Iterator[bytes | bytearray | memoryview]: ...

    @abstractmethod
    def materialize(self) -> Any: ...


#: A piece of an encoded file: bytes, or a streamed value's bytes still to be made.
Chunk = bytes | bytearray | Streamed


def materialize(dataset: Dataset) -> None:
    """Replace the data set's top-level :class:`Streamed` values by their real values."""
    for elem in dataset._dict.values():
        if isinstance(elem, DataElement) and isinstance(elem._value, Streamed):
            elem._value = elem._value.materialize()


def iter_bytes(chunks: Iterable[Chunk]) -> Iterator[bytes | bytearray | memoryview]:
    """The file's bytes, chunk by chunk (streamed values made one piece at a time)."""
    for chunk in chunks:
        if isinstance(chunk, Streamed):
            yield from chunk.chunks()
        else:
            yield chunk


class _Unsupported(Exception):
    """The object is written by ``dcmwrite`` itself."""


def _multi(value: object) -> bool:
    # pydicom's _is_multi_value without importing numpy here: an ndarray value falls
    # through to the element fallback (its type is checked below).
    return isinstance(value, _MULTI)


class _Encoder:
    """One pass over a data set; ``chunks`` collects the top level without copying."""

    def __init__(self) -> None:
        self._encodings: dict[object, list[str]] = {}

    def encodings(self, charset: object) -> list[str]:
        """pydicom's Python encodings of a Specific Character Set value (cached)."""
        key = tuple(charset) if isinstance(charset, list | MultiValue) else charset
        found = self._encodings.get(key)
        if found is None:
            found = convert_encodings(charset or [default_encoding])  # type: ignore[arg-type]
            self._encodings[key] = found
        return found

    def dataset(
        self,
        dataset: Dataset,
        parent: object,
        out: list[Chunk],
        ancestors: tuple[Dataset, ...] = (),
    ) -> None:
        """Append the encoded elements of ``dataset`` to ``out`` (pydicom's write_dataset)."""
        # pydicom re-encodes (and corrects ambiguous VRs) unless the data set was read
        # with this very encoding and character set; then raw elements pass unchanged.
        convert = (
            dataset.original_encoding != (False, True)
            or dataset.original_character_set != dataset._character_set
        )
        items = dataset._dict
        charset = parent
        if 0x00080005 in items:
            charset = dataset[0x00080005].value
        encodings = self.encodings(charset)
        for tag in sorted(items):
            if tag & 0xFFFF == 0 and tag >> 16 > 6:  # retired group lengths
                continue
            elem = items[tag]
            if isinstance(elem, RawDataElement):
                if not convert:
                    out.append(self.pydicom_element(dataset.get_item(tag), encodings))
                    continue
                if tag != _PIXEL_DATA and _vr_of(elem) in _AMBIGUOUS:
                    raise _Unsupported
                elem = dataset[tag]  # converted (Pixel Data's VR corrected on this level)
            if elem.VR in _AMBIGUOUS:
                # As pydicom does before writing: from Bits Allocated, Pixel
                # Representation… of the data set or its parents (closest first).
                correct_ambiguous_vr_element(elem, dataset, True, [dataset, *ancestors])
                if elem.VR in _AMBIGUOUS:
                    raise _Unsupported  # pydicom refuses to write it
            self.element(elem, encodings, out, (dataset, *ancestors))

    def pydicom_element(self, elem: DataElement | RawDataElement, encodings: list[str]) -> bytes:
        """One element as pydicom writes it."""
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = False
        write_data_element(buffer, elem, encodings)
        return buffer.getvalue()

    def element(
        self,
        elem: DataElement,
        encodings: list[str],
        out: list[Chunk],
        ancestors: tuple[Dataset, ...],
    ) -> None:
        vr = elem.VR
        tag = elem.tag
        value = elem._value
        if isinstance(value, Streamed):
            if vr not in _LONG or elem.is_undefined_length:
                raise _Unsupported
            out.append(_TAG_VR_LEN32.pack(tag >> 16, tag & 0xFFFF, vr.encode(), len(value)))
            out.append(value)
            return
        if vr == "SQ":
            self.sequence(elem, encodings, out, ancestors)
            return
        encoded = self.value(vr, tag, value, encodings)
        if encoded is None:
            out.append(self.pydicom_element(elem, encodings))
            return
        length = len(encoded)
        if vr in _LONG:
            out.append(_TAG_VR_LEN32.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length))
        elif length > 0xFFFF:
            out.append(self.pydicom_element(elem, encodings))  # pydicom writes it as UN
            return
        else:
            out.append(_TAG_VR_LEN16.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length))
        if length:
            out.append(encoded)

    def value(self, vr: str, tag: int, value: Any, encodings: list[str]) -> bytes | None:
        """The padded value bytes, or None where pydicom's own writer must do it."""
        if value is None:
            return b""
        if isinstance(value, str):
            if not value:
                return b""
            if vr in _TEXT:
                first = encodings[0]
                if first in custom_encoders or first in need_tail_escape_sequence_encodings:
                    return None
                try:
                    data = value.encode(first)
                except (UnicodeError, LookupError):
                    return None
                return data + b" " if len(data) % 2 else data
            if vr == "UI":
                pad = "\0"
            elif vr in _STRING:
                pad = " "
            else:  # PN, DS, IS, numbers given as text…
                return None
            if len(value) % 2:
                value += pad
            try:
                return value.encode(default_encoding)
            except UnicodeError:
                return None
        if vr in _NUMBERS:
            return self.numbers(vr, tag, value)
        if vr in _BYTES or vr == "UN":
            if type(value) is not bytes:
                return None
            if len(value) % 2 and vr != "UN":
                return value + b"\x00"
            return value
        if vr == "DS" or vr == "IS":
            return self.number_string(value)
        if _multi(value):
            if not value:
                return b""
            if vr == "UI" or vr in _STRING or vr in _TEXT:
                return self.strings(vr, value, encodings)
        return None

    def numbers(self, vr: str, tag: int, value: Any) -> bytes | None:
        fmt = _NUMBERS[vr]
        try:
            if hasattr(value, "append"):
                if not value:
                    return b""
                if fmt == "h" and tag in _LUT_DESCRIPTORS:
                    return None
                return pack(f"<{len(value)}{fmt}", *value)
            return pack("<" + fmt, value)
        except Exception:  # pydicom raises its own error for it
            return None

    @staticmethod
    def number_string(value: Any) -> bytes | None:
        if _multi(value):
            if not value:
                return b""
            text = "\\".join(
                x.original_string if hasattr(x, "original_string") else str(x) for x in value
            )
        elif isinstance(value, str | int | float):
            text = value.original_string if hasattr(value, "original_string") else str(value)
        else:
            return None
        if not text:
            return b""
        if len(text) % 2:
            text += " "
        try:
            return text.encode(default_encoding)
        except UnicodeError:
            return None

    def strings(self, vr: str, values: Iterable[Any], encodings: list[str]) -> bytes | None:
        parts = list(values)
        if not all(isinstance(part, str) for part in parts):
            return None
        if vr in _TEXT:
            first = encodings[0]
            if first in custom_encoders or first in need_tail_escape_sequence_encodings:
                return None
            try:
                data = b"\\".join(part.encode(first) for part in parts)
            except (UnicodeError, LookupError):
                return None
            return data + b" " if len(data) % 2 else data
        text = "\\".join(parts)
        if len(text) % 2:
            text += "\0" if vr == "UI" else " "
        try:
            return text.encode(default_encoding)
        except UnicodeError:
            return None

    def sequence(
        self,
        elem: DataElement,
        encodings: list[str],
        out: list[Chunk],
        ancestors: tuple[Dataset, ...],
    ) -> None:
        tag = elem.tag
        # A sequence held encoded until read (an SR's Image Library entries): its items'
        # bytes as they are, when still unread (their text is ASCII, as in any charset).
        encoded_items = getattr(elem._value, "encoded_items", None)
        held = encoded_items() if encoded_items is not None else None
        if held is not None and not elem.is_undefined_length:
            out.append(_TAG_VR_LEN32.pack(tag >> 16, tag & 0xFFFF, b"SQ", len(held)))
            out.append(held)
            return
        body = bytearray()
        for item in elem._value:
            if not isinstance(item, Dataset):
                raise _Unsupported
            parts: list[Chunk] = []
            self.dataset(item, encodings, parts, ancestors)
            encoded = b"".join(iter_bytes(parts))
            if getattr(item, "is_undefined_length_sequence_item", False):
                body += _ITEM.pack(0xFFFE, 0xE000, _UNDEFINED)
                body += encoded
                body += _ITEM_DELIMITER
            else:
                body += _ITEM.pack(0xFFFE, 0xE000, len(encoded))
                body += encoded
        undefined = elem.is_undefined_length
        length = _UNDEFINED if undefined else len(body)
        out.append(_TAG_VR_LEN32.pack(tag >> 16, tag & 0xFFFF, b"SQ", length))
        out.append(body)
        if undefined:
            out.append(_SEQUENCE_DELIMITER)


def encode_body(dataset: Dataset) -> list[Chunk] | None:
    """The data set's elements as Explicit VR Little Endian chunks, or None where only
    pydicom's writer can encode it (an ambiguous VR, a non-Dataset item)."""
    out: list[Chunk] = []
    try:
        _Encoder().dataset(dataset, default_encoding, out)
    except _Unsupported:
        return None
    return out


def _file_meta(dataset: Dataset) -> FileMetaDataset | None:
    """The file meta ``dcmwrite(enforce_file_format=True)`` writes, or None when the
    data set is not Explicit VR Little Endian (or dcmwrite would refuse it)."""
    if any(tag >> 16 in (0, 2) for tag in dataset._dict):
        return None
    source = getattr(dataset, "file_meta", None)
    file_meta = FileMetaDataset() if source is None else deepcopy(source)
    if file_meta.get("TransferSyntaxUID", None) != ExplicitVRLittleEndian:
        return None
    meta_class = file_meta.get("MediaStorageSOPClassUID", None)
    ds_class = dataset.get("SOPClassUID", None)
    if meta_class is None or (ds_class and ds_class != meta_class):
        file_meta.MediaStorageSOPClassUID = ds_class
    meta_instance = file_meta.get("MediaStorageSOPInstanceUID", None)
    ds_instance = dataset.get("SOPInstanceUID", None)
    if meta_instance is None or (ds_instance and ds_instance != meta_instance):
        file_meta.MediaStorageSOPInstanceUID = ds_instance
    validate_file_meta(file_meta, enforce_standard=True)
    return file_meta


def encode_chunks(dataset: Dataset) -> list[Chunk]:
    """The DICOM file of ``dataset`` as chunks (large values such as Pixel Data are not
    copied, :class:`Streamed` values not yet made: :func:`iter_bytes` gives the bytes);
    the bytes equal ``dcmwrite(..., enforce_file_format=True)``'s."""
    preamble = getattr(dataset, "preamble", None)
    file_meta = None if preamble and len(preamble) != 128 else _file_meta(dataset)
    body = None if file_meta is None else encode_body(dataset)
    if file_meta is None or body is None:
        materialize(dataset)
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        return [buffer.getvalue()]
    pixel_data = dataset._dict.get(BaseTag(_PIXEL_DATA))
    if isinstance(pixel_data, DataElement):  # as dcmwrite: native Pixel Data has a defined length
        pixel_data.is_undefined_length = False
    elif pixel_data is not None:
        dataset["PixelData"].is_undefined_length = False
    header = DicomBytesIO()
    header.is_little_endian = True
    header.is_implicit_VR = False
    header.write(preamble or b"\x00" * 128)
    header.write(b"DICM")
    write_file_meta_info(header, file_meta, enforce_standard=True)
    return [header.getvalue(), *body]


def encode_file(dataset: Dataset) -> bytes:
    """The DICOM file of ``dataset``: the bytes of ``dcmwrite(enforce_file_format=True)``."""
    return b"".join(iter_bytes(encode_chunks(dataset)))


def write_file(dataset: Dataset, handle: BinaryIO) -> int:
    """Write the DICOM file of ``dataset`` to ``handle``; returns the bytes written."""
    written = 0
    for chunk in iter_bytes(encode_chunks(dataset)):
        written += handle.write(chunk)
    return written
