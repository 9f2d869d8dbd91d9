"""Image Library entries encoded straight to bytes, and the sequence that holds them.

A 300-slice SR's Image Library is ~13,000 nested items: making them as pydicom data
sets and walking them again on write cost most of the SR's build and write. Here each
entry is encoded directly (Explicit VR Little Endian, the node's transfer syntax) from
pieces encoded once per library (code items, the descriptors that repeat from slice to
slice). :class:`EncodedSequence` holds those bytes in the data set: the node's writer
(:mod:`node.results.encode`) copies them; anything that reads the sequence gets the
items, made then (:func:`node.results.sr.tid1500.image_library` builds both the same
way; tests/test_sr_fast.py compares the bytes with highdicom's).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xL")
_ITEM = struct.Struct("<HHL")
_FD = struct.Struct("<d")

Name = tuple[str, str, str]


class EncodedSequence(DicomSequence):
    """A sequence whose items are held encoded until something reads them.

    ``encoded`` is the items as written (each with its item tag and length); ``make``
    makes the same items as data sets, new ones at each call, on first use of the
    sequence as a list. Once made they may change, so the writer then encodes them as
    usual (:meth:`encoded_items` says None). A deep copy of a held sequence is held too;
    a pickled one is a plain sequence of the items.
    """

    def __init__(self, encoded: bytes, make: Callable[[], Iterable[Dataset]]) -> None:
        self.is_undefined_length = False
        self._encoded = encoded
        self._make: Callable[[], Iterable[Dataset]] | None = make
        self._made: list[Dataset] = []

    @property
    def _list(self) -> list[Dataset]:
        if self._make is not None:
            make, self._make = self._make, None
            self._made = [self._validate(item) for item in make()]
        return self._made

    @_list.setter
    def _list(self, value: list[Dataset]) -> None:
        self._make = None
        self._made = value

    def encoded_items(self) -> bytes | None:
        """The items' bytes, or None once they were made (read or changed since)."""
        return self._encoded if self._make is not None else None

    @property
    def text_items(self) -> list[Dataset]:
        """Items to walk for text (a character set check): none while the items are
        only encoded (their text is ASCII, checked as they are encoded)."""
        return [] if self._make is not None else self._list

    def __deepcopy__(self, memo: dict[int, Any]) -> DicomSequence:
        if self._make is not None:  # still held: so is the copy (its items made anew)
            return EncodedSequence(self._encoded, self._make)
        return DicomSequence(deepcopy(self._made, memo))

    def __reduce__(self) -> tuple[Any, ...]:
        made = list(self._make()) if self._make is not None else self._made
        return (DicomSequence, (made,))


def _ascii(text: str) -> bytes:
    if not text.isascii():
        raise ValueError(f"not ASCII: {text!r}")
    return text.encode("ascii")


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One element of a short-length VR (its value already padded to even length)."""
    return _SHORT.pack(tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def text(tag: int, vr: bytes, value: str) -> bytes:
    """A CS/SH/LO (space-padded) or UI (NUL-padded) element of ASCII text."""
    data = _ascii(value)
    if len(data) % 2:
        data += b"\0" if vr == b"UI" else b" "
    return element(tag, vr, data)


def items(encoded: Iterable[bytes]) -> bytes:
    """Items of a sequence, each with its defined length."""
    return b"".join(_ITEM.pack(0xFFFE, 0xE000, len(item)) + item for item in encoded)


def sequence(tag: int, encoded: Iterable[bytes]) -> bytes:
    """A sequence element of defined length holding the encoded items."""
    body = items(encoded)
    return _LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", len(body)) + body


def decimal_string(tag: int, value: object) -> bytes:
    """A DS element as the writer writes it (its original string, else ``str``)."""
    string = getattr(value, "original_string", None)
    if string is None:
        string = str(value)
    return text(tag, b"DS", string)


def floating(tag: int, value: float) -> bytes:
    return element(tag, b"FD", _FD.pack(value))
