"""BINARY SEG frames packed with numpy: the same object as highdicom's, without its per-frame loop.

highdicom builds a BINARY SEG one frame at a time (a boolean mask, a flattened copy,
bit packing and a per-frame functional groups item of fresh datasets): with every frame
kept, 100 segments on 300 slices are 30 000 rounds of that loop. Here highdicom builds
the SEG of the first segment only (one frame per slice, all empty), which gives every
attribute that does not depend on the segments' pixels; then:

* the per-frame items are new items that share that build's Plane Position and
  Derivation Image elements (the same values on every segment of a slice) and have
  their own Frame Content (Dimension Index Values) and their segment's one Segment
  Identification element (highdicom puts it in the shared functional groups when there
  is one segment);
* Pixel Data is one buffer of zero frames into which each segment's non-empty slices are
  written, packed with ``np.packbits`` a few slices at a time (no one-hot array of the
  whole label map);
* Segment Sequence gets every description, and a single-segment "3D" dimension
  organization is dropped as highdicom does for several segments.

tests/test_seg_frames.py compares the result with highdicom's own construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.contract.volume import Volume
from node.results.source import frame_keys

#: Slices packed at a time: bounds the temporary mask to this many slices.
CHUNK_SLICES = 16

_FRAME_CONTENT = Tag(0x00209111)
_DIMENSION_INDEX_VALUES = Tag(0x00209157)
_SEGMENT_IDENTIFICATION = Tag(0x0062000A)
_REFERENCED_SEGMENT_NUMBER = Tag(0x0062000B)
_DERIVATION_IMAGE = Tag(0x00089124)
_SOURCE_IMAGE = Tag(0x00082112)

#: ``build(descriptions, pixel_array) -> Segmentation`` with every other argument bound.
Build = Callable[[Sequence[hd.seg.SegmentDescription], np.ndarray], hd.seg.Segmentation]


def packable(volume: Volume, segment_numbers: np.ndarray) -> bool:
    """Whether :func:`build_binary_seg` applies: each frame a whole number of bytes.

    highdicom carries leftover bits of a frame into the next when rows x columns is not
    a multiple of 8; such SEGs are left to highdicom.
    """
    rows, columns = segment_numbers.shape[1:3]
    return segment_numbers.ndim == 3 and (rows * columns) % 8 == 0 and len(volume.datasets) > 0


def _frame_slices(probe: Dataset, volume: Volume) -> list[int] | None:
    """Volume slice of each frame of the one-segment build (None when one is not found)."""
    slice_of = {key: index for index, key in enumerate(frame_keys(volume))}
    slices = []
    for item in probe.PerFrameFunctionalGroupsSequence:
        derivation = item.get(_DERIVATION_IMAGE)
        if derivation is None or not derivation.value:
            return None
        sources = derivation.value[0].get(_SOURCE_IMAGE)
        if sources is None or len(sources.value) != 1:
            return None
        source = sources.value[0]
        key = str(source.ReferencedSOPInstanceUID)
        if "ReferencedFrameNumber" in source:
            key = f"{key}/{int(source.ReferencedFrameNumber)}"
        index = slice_of.get(key)
        if index is None:
            return None
        slices.append(index)
    return slices if len(set(slices)) == len(slices) == len(volume.datasets) else None


def _segment_identification(segment: int) -> DataElement:
    """Segment Identification of ``segment``: one element shared by all its frames."""
    identification = Dataset()
    identification.add(DataElement(_REFERENCED_SEGMENT_NUMBER, "US", segment))
    return DataElement(_SEGMENT_IDENTIFICATION, "SQ", [identification])


def _frame_item(shared: list[DataElement], plane: int, identification: DataElement) -> Dataset:
    """A per-frame item on the ``plane``-th plane (1-based, sort order) of a segment."""
    item = Dataset()
    for element in shared:
        item.add(element)
    segment = int(identification.value[0].ReferencedSegmentNumber)
    content = Dataset()
    content.add(DataElement(_DIMENSION_INDEX_VALUES, "UL", [segment, plane]))
    item.add(DataElement(_FRAME_CONTENT, "SQ", [content]))
    item.add(identification)
    return item


def _pack(segment_numbers: np.ndarray, frame_slices: list[int], segments: int) -> bytearray:
    """Pixel Data of ``segments`` segments, frames in segment then plane order."""
    planes, rows, columns = segment_numbers.shape
    frame_bytes = rows * columns // 8
    data = bytearray(segments * planes * frame_bytes)
    frames = np.frombuffer(data, dtype=np.uint8).reshape(segments, planes, frame_bytes)
    # Frame position of each volume slice, and the segments on each slice.
    position = np.empty(planes, dtype=np.intp)
    position[np.asarray(frame_slices)] = np.arange(planes)
    for start in range(0, planes, CHUNK_SLICES):
        chunk = segment_numbers[start : start + CHUNK_SLICES]
        flat = chunk.reshape(len(chunk), -1)
        present = np.unique(flat)
        for number in present[(present > 0) & (present <= segments)].tolist():
            mask = flat == number
            on = np.flatnonzero(mask.any(axis=1))
            packed = np.packbits(mask[on], axis=1, bitorder="little")
            frames[number - 1, position[start + on]] = packed
    return data


def build_binary_seg(
    volume: Volume,
    segment_numbers: np.ndarray,
    descriptions: Sequence[hd.seg.SegmentDescription],
    build: Build,
) -> hd.seg.Segmentation | None:
    """The BINARY SEG of ``segment_numbers`` (values 1..len(descriptions)), every frame kept.

    ``build`` is highdicom's construction with every argument but the descriptions and
    the pixel array bound (``omit_empty_frames=False``). Returns None where the fast path
    does not apply (see :func:`packable`; sources not one per plane): the caller then
    builds through highdicom.
    """
    if not packable(volume, segment_numbers) or not descriptions:
        return None
    planes = segment_numbers.shape[0]
    empty = np.broadcast_to(np.zeros((1, 1, 1), dtype=segment_numbers.dtype), segment_numbers.shape)
    seg = build(descriptions[:1], empty)
    frame_slices = _frame_slices(seg, volume)
    if frame_slices is None:
        return None
    first = list(seg.PerFrameFunctionalGroupsSequence)
    shared = [
        [
            item[element.tag]
            for element in item.elements()
            if element.tag not in (_FRAME_CONTENT, _SEGMENT_IDENTIFICATION)
        ]
        for item in first
    ]
    items = first
    if len(descriptions) > 1:
        # One segment's identification is shared; several segments' are per frame.
        del seg.SharedFunctionalGroupsSequence[0][_SEGMENT_IDENTIFICATION]
        items = [
            _frame_item(elements, plane, identification)
            for identification in map(_segment_identification, range(1, len(descriptions) + 1))
            for plane, elements in enumerate(shared, start=1)
        ]
    packed = _pack(segment_numbers, frame_slices, len(descriptions))
    if len(packed) % 2:
        packed += b"0"  # highdicom pads with the character "0"
    data = bytes(packed)  # pydicom takes a bytearray for a list of numbers
    del packed
    seg.SegmentSequence = list(descriptions)
    seg.PerFrameFunctionalGroupsSequence = items
    seg.NumberOfFrames = len(items)
    seg.PixelData = data
    if len(descriptions) > 1 and "DimensionOrganizationType" in seg:
        del seg.DimensionOrganizationType  # highdicom infers "3D" for one segment only
    seg._build_luts()
    assert len(items) == planes * len(descriptions)
    return seg
