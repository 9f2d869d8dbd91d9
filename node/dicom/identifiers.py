"""The few top-level elements the C-STORE handler reads, found without decoding the data set.

pydicom's ``Event.dataset`` walks every element of a received data set to build its
``Dataset`` (about a fifth of the handler's GIL-held time, py-spy, issue #14 round 5).
The handler needs a dozen top-level elements: the identifiers and the image description
that :func:`~node.pixel_length.pixel_data_problem` checks. :func:`scan` steps over the
data set's elements by their lengths (items of undefined-length sequences included) and
returns a ``Dataset`` of only those elements, and the length of the pixel data element.
Each value is converted by pydicom's own converter for its VR (``pydicom.values``), so it
is exactly what pydicom would read, without pydicom's per-element machinery around it
(hooks, validation, conversion on access: a tenth of the listener's interpreter time,
issue #14). An element whose VR is not its dictionary VR, an empty one, or one whose
value the converter refuses, stays raw for pydicom to convert (and warn about) on access.
pydicom's ``UID`` still warns about a malformed UID as it is made (and the handler refuses
it, ``is_valid_uid``); the reading validation of the other VRs (a CS over 16 characters,
say) is not run here.

It declines (returns None, and the caller decodes the whole data set with pydicom) for
anything it does not step over with certainty: a syntax other than little endian
explicit or implicit VR, a length running past the end, a wanted value that is not plain
ASCII (its decoding could depend on the character set) or is multi-valued, an undefined
length on anything but a sequence (a UN holding implicit VR items, encapsulated pixels).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.values import convert_IS_string, convert_numbers, convert_string, convert_UI

#: Top-level elements read at receive time (group, element packed as group << 16 | element).
WANTED = frozenset(
    {
        0x00080016,  # SOPClassUID
        0x00080018,  # SOPInstanceUID
        0x00080060,  # Modality
        0x0020000D,  # StudyInstanceUID
        0x0020000E,  # SeriesInstanceUID
        0x00280002,  # SamplesPerPixel
        0x00280004,  # PhotometricInterpretation
        0x00280008,  # NumberOfFrames
        0x00280010,  # Rows
        0x00280011,  # Columns
        0x00280100,  # BitsAllocated
    }
)
#: pydicom's converter (encoded bytes, little endian) for each VR of a wanted element.
_CONVERTERS: dict[str, Callable[[bytes, bool], Any]] = {
    "UI": convert_UI,
    "CS": convert_string,
    "IS": convert_IS_string,
    "US": lambda value, little: convert_numbers(value, little, "H"),
}
#: Each wanted element's dictionary VR (the only VR it is converted from here).
_VRS = {tag: dictionary_VR(tag) for tag in WANTED}
assert {*_VRS.values()} <= {*_CONVERTERS}
#: The pixel data elements: their lengths, not their values.
PIXELS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN"})
_LONG_VRS |= {b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")


class _Decline(Exception):
    """The data set is not one :func:`scan` steps over with certainty."""


class _Walker:
    def __init__(self, data: memoryview, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.end = len(data)

    def header(self, at: int) -> tuple[int, bytes | None, int, int]:
        """Tag, VR (None in implicit VR), value length and value offset at ``at``."""
        if at + 8 > self.end:
            raise _Decline
        group, element = _TAG.unpack_from(self.data, at)
        tag = group << 16 | element
        if self.implicit or group == 0xFFFE:  # item tags have no VR in either syntax
            return tag, None, _U32.unpack_from(self.data, at + 4)[0], at + 8
        vr = bytes(self.data[at + 4 : at + 6])
        if vr in _LONG_VRS:
            if at + 12 > self.end:
                raise _Decline
            return tag, vr, _U32.unpack_from(self.data, at + 8)[0], at + 12
        if not vr.isalpha() or not vr.isupper():
            raise _Decline
        return tag, vr, _U16.unpack_from(self.data, at + 6)[0], at + 8

    def skip_undefined(self, at: int, stop: int) -> int:
        """Past the element list starting at ``at`` that ends with the tag ``stop``."""
        while True:
            tag, vr, length, at = self.header(at)
            if tag == stop:
                return at
            if length == _UNDEFINED:
                if tag == _ITEM:
                    at = self.skip_undefined(at, _ITEM_END)
                elif self.implicit or vr == b"SQ":
                    at = self.skip_undefined(at, _SEQUENCE_END)
                else:
                    raise _Decline
            else:
                at += length
            if at > self.end:
                raise _Decline


def scan(data: bytes | bytearray | memoryview, transfer_syntax: str) -> tuple[Dataset, int] | None:
    """The wanted elements of an encoded data set as a ``Dataset`` of raw elements (a
    pixel data element with an empty value) and the length of its pixel data element
    (-1: none); None when the data set is left to pydicom (see the module docstring)."""
    if transfer_syntax == ExplicitVRLittleEndian:
        implicit = False
    elif transfer_syntax == ImplicitVRLittleEndian:
        implicit = True
    else:
        return None
    with memoryview(data) as view:
        try:
            return _scan(_Walker(view, implicit))
        except (_Decline, struct.error):
            return None


def _scan(walker: _Walker) -> tuple[Dataset, int]:
    data, end, implicit = walker.data, walker.end, walker.implicit
    found: dict[BaseTag, DataElement | RawDataElement] = {}
    pixel_length = -1
    at = 0
    while at < end:
        tag, vr, length, start = walker.header(at)
        if length == _UNDEFINED:
            # Only a sequence steps over here: a UN of undefined length holds implicit VR
            # items inside explicit VR, encapsulated pixels are not native.
            if tag in WANTED or tag in PIXELS or tag >> 16 == 0xFFFE or vr not in (None, b"SQ"):
                raise _Decline
            at = walker.skip_undefined(start, _SEQUENCE_END)
            continue
        at = start + length
        if at > end:
            raise _Decline
        if tag in PIXELS:
            if pixel_length >= 0:  # a second pixel data element: pydicom's path says so
                raise _Decline
            pixel_length = length
            # Present, its value left out (pixel_data_problem's pixel_length); a VR given so
            # that pydicom need not resolve implicit VR's "OB or OW" for an empty value.
            key = Tag(tag)
            found[key] = RawDataElement(
                key, "OB" if vr is None else vr.decode(), 0, b"", start, implicit, True
            )
        elif tag in WANTED:
            value = bytes(data[start:at])
            if not value.isascii() or b"\\" in value:
                raise _Decline
            found[Tag(tag)] = _element(tag, vr, value, start, implicit)
    return Dataset(found), pixel_length


def _element(
    tag: int, vr: bytes | None, value: bytes, start: int, implicit: bool
) -> DataElement | RawDataElement:
    """A wanted element, converted as pydicom converts it, or raw where pydicom must."""
    key = Tag(tag)
    expected = _VRS[tag]
    stated = None if vr is None else vr.decode()
    # pydicom gives empty values of its own (None or ""): left to it.
    if value and stated in (None, expected):
        try:
            converted = _CONVERTERS[expected](value, True)
        except Exception:  # pydicom decides (and says) what to make of it on access
            pass
        else:
            return DataElement(key, expected, converted, start, already_converted=True)
    return RawDataElement(key, stated, len(value), value, start, implicit, True)
