"""Element values of a series' headers, each distinct encoded value converted once.

Most elements of a series hold the same bytes in every header (the study, series,
frame-of-reference and SOP class UIDs, orientation, spacing, rows, columns...). Read
slice by slice through pydicom, each is converted again in every header (~40 us each:
its hooks, a DataElement, validation): a few seconds for a 1000-slice series read by
the SEG, the SR's Image Library and its evidence. :class:`HeaderValues` converts each
distinct raw value once, the usual way (``header[tag]``), and hands the same value to
every header that holds those bytes.

Only raw elements whose value reads the same in any data set are shared this way
(:func:`node.results.source.shareable`: not text, sequences, UN, ambiguous VRs or
private tags read as implicit VR); anything else is read from its own header.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from node.results.source import shareable

_ABSENT = object()


class HeaderValues:
    """``header[tag].value`` of many headers, each distinct raw value converted once.

    The values are shared between the headers that hold the same bytes: read them,
    never change them (a MultiValue is a list).
    """

    def __init__(self) -> None:
        self._converted: dict[tuple[Any, ...], Any] = {}

    def get(self, header: Dataset, tag: int, default: Any = None) -> Any:
        """``header[tag].value``; ``default`` when ``header`` lacks ``tag``."""
        element = header._dict.get(tag)  # type: ignore[call-overload]
        if element is None:
            return default
        if type(element) is DataElement:
            return element.value
        if not isinstance(element, RawDataElement) or not shareable(element):
            return header[tag].value
        key = (
            tag,
            element.VR,
            element.is_implicit_VR,
            element.is_little_endian,
            element.value,
        )
        value = self._converted.get(key, _ABSENT)
        if value is _ABSENT:
            value = self._converted[key] = header[tag].value
        return value

    def __call__(self, header: Dataset, tag: int) -> Any:
        """``header[tag].value``; ``KeyError`` naming the tag when ``header`` lacks it,
        as pydicom's look-up."""
        value = self.get(header, tag, _ABSENT)
        if value is _ABSENT:
            raise KeyError(BaseTag(tag))
        return value
