"""highdicom's IOD lookup, memoized: the same answer without a walk of the standard's tables.

``highdicom._standard_utils.is_attribute_in_iod`` walks every attribute of every module
of the IOD on each call (about 0.5 ms). ``is_multiframe_image`` calls it, and highdicom
calls that once per source image when it builds a SEG (``get_plane_positions_of_series``)
or an SR's image references: 300 walks for a 300-slice series, about a third of
highdicom's SEG construction. The answer depends only on the arguments and on the
standard's tables that ship with highdicom, so it is cached per (attribute, SOP Class
UID, excluded path elements). :func:`install` replaces the module-level function that
``is_multiframe_image`` and ``does_iod_have_pixel_data`` look up; modules that imported
the name themselves keep the original.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from highdicom import _standard_utils

_ORIGINAL: Callable[..., bool] = getattr(
    _standard_utils.is_attribute_in_iod, "__wrapped_iod__", _standard_utils.is_attribute_in_iod
)


@functools.lru_cache(maxsize=4096)
def _cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    return bool(_ORIGINAL(attribute, sop_class_uid, list(exclude) if exclude is not None else None))


def is_attribute_in_iod(
    attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
) -> bool:
    """``highdicom._standard_utils.is_attribute_in_iod``, cached (raises its KeyError
    for an unknown SOP Class UID, which is not cached)."""
    exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
    return _cached(str(attribute), str(sop_class_uid), exclude)


is_attribute_in_iod.__wrapped_iod__ = _ORIGINAL  # type: ignore[attr-defined]


def install() -> None:
    """Make highdicom's own lookups (``is_multiframe_image``, …) use the cached one."""
    _standard_utils.is_attribute_in_iod = is_attribute_in_iod


def warm() -> None:
    """Load the standard's tables highdicom reads on first use (~0.6 s of JSON), so the
    first result a node builds after start does not wait for them."""
    is_attribute_in_iod("PixelData", "1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
