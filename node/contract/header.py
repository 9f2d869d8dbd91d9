"""A native little-endian file's header parsed from its first bytes, as pydicom parses it.

:func:`parse_header` walks the top-level elements of an Explicit or Implicit VR Little
Endian data set held in ``chunk`` (the file's first bytes) and builds the
:class:`~pydicom.dataset.FileDataset` that ``pydicom.dcmread(..., stop_before_pixels=True)``
builds: the same raw elements (tag, VR, length, value, offset, encoding), left undecoded
until used, the same file meta information, preamble and original encoding. It does
only the common case, quickly; anything else (an element of undefined length, a
delimiter, an unknown VR, a VR that contradicts the transfer syntax, a command set, a
header longer than ``chunk``) returns None and the caller lets pydicom read the file.
"""

from __future__ import annotations

import io
import struct

from pydicom.charset import default_encoding
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    empty_value_for_VR,
)
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

#: Where ``stop_before_pixels`` stops (pydicom's ``_at_pixel_data``).
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
#: Explicit VR bytes pydicom knows, decoded; and those with a 4-byte length.
_VRS = {vr.encode(default_encoding): vr.encode(default_encoding).decode() for vr in VR}
_LONG = frozenset(name for name in _VRS.values() if name in EXPLICIT_VR_LENGTH_32)
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")


def parse_header(chunk: bytes) -> tuple[FileDataset, int] | None:
    """The header of the file whose first bytes are ``chunk``, and the offset of the
    element pydicom stops before (Pixel Data); None when pydicom must read the file."""
    if chunk[128:132] != b"DICM":
        return None  # no preamble: pydicom reads it, or says why not
    walked_meta = _walk(chunk, 132, False, meta=True)
    if walked_meta is None:
        return None  # meta information pydicom reads another way, or ends past the chunk
    meta_elements, position = walked_meta
    file_meta = FileMetaDataset(meta_elements)
    file_meta.set_original_encoding(False, True, default_encoding)
    syntax = file_meta.get("TransferSyntaxUID")
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    implicit = syntax == ImplicitVRLittleEndian
    walked = _walk(chunk, position, implicit)
    if walked is None:
        return None
    elements, stop = walked
    fp = io.BytesIO(chunk)
    fp.seek(stop)
    header = FileDataset(fp, elements, chunk[:128], file_meta, implicit, True)
    # As pydicom does: its Specific Character Set decoded, the rest left raw.
    header.set_original_encoding(implicit, True, header._character_set)
    return header, stop


_Elements = dict[BaseTag, RawDataElement | DataElement]


def _walk(
    chunk: bytes, position: int, implicit: bool, *, meta: bool = False
) -> tuple[_Elements, int] | None:
    """The raw elements from ``position`` up to the Pixel Data (``meta``: up to the first
    element after group 0002), and where it starts."""
    elements: _Elements = {}
    end = len(chunk)
    first = True
    while position + 8 <= end:
        group, number = _TAG.unpack_from(chunk, position)
        tag = group << 16 | number
        if meta and group != 2:
            return (elements, position) if elements else None
        if group == 0 and not meta:
            return None  # a command set: pydicom reads it
        raw_vr = chunk[position + 4 : position + 6]
        if first:  # pydicom's check that the data set's VRs match the transfer syntax
            looks_implicit = not (0x40 < raw_vr[0] < 0x5B and 0x40 < raw_vr[1] < 0x5B)
            if looks_implicit != implicit:
                return None
            first = False
        vr: str | None
        if implicit:
            vr = None
            (length,) = _U32.unpack_from(chunk, position + 4)
            value_at = position + 8
        else:
            vr = _VRS.get(raw_vr)
            if vr is None:
                return None
            if vr in _LONG:
                if position + 12 > end:
                    return None
                (length,) = _U32.unpack_from(chunk, position + 8)
                value_at = position + 12
            else:
                (length,) = _U16.unpack_from(chunk, position + 6)
                value_at = position + 8
        if tag in _PIXEL_TAGS:
            return elements, position
        if group == 0xFFFE or length == 0xFFFFFFFF or value_at + length > end:
            return None
        value = chunk[value_at : value_at + length] if length else empty_value_for_VR(vr, raw=True)
        key = BaseTag(tag)
        elements[key] = RawDataElement(key, vr, length, value, value_at, implicit, True)  # type: ignore[arg-type]
        position = value_at + length
    return None  # the chunk ends before the pixel data
