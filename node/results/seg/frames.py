"""BINARY SEG frames packed with numpy: the same object as highdicom's, without its per-frame loop.

highdicom builds a BINARY SEG one frame at a time (a boolean mask, a flattened copy,
bit packing and a per-frame functional groups item of fresh datasets): with every frame
kept, 100 segments on 300 slices are 30 000 rounds of that loop, and the object holds
30 000 items and a 950 MB Pixel Data. Here highdicom builds the SEG of the first segment
only (one frame per slice, all empty), which gives every attribute that does not depend
on the segments' pixels; then the object becomes a :class:`StreamedSegmentation` whose
two large values are :class:`node.results.encode.Streamed` (made while the file is
written, never held whole):

* :class:`FrameItems`: the per-frame items, as bytes per segment: each plane's Plane
  Position and Derivation Image elements are encoded once (the same on every segment of
  a slice), Frame Content (Dimension Index Values) and Segment Identification are packed
  per frame (highdicom puts the identification in the shared functional groups when there
  is one segment: then the probe's own items are kept);
* :class:`PackedFrames`: Pixel Data, segment after segment, a few frames at a time, each
  segment's frames packed with ``np.packbits`` inside its bounding box only (no one-hot
  array of the whole label map);
* Segment Sequence gets every description, and a single-segment "3D" dimension
  organization is dropped as highdicom does for several segments.

Reading either value (``seg.PixelData``, ``seg[tag]``, ``dcmwrite``) makes it in place;
highdicom's frame queries rebuild their tables from the made items. The written bytes
equal ``dcmwrite`` of highdicom's own construction: tests/test_seg_frames.py.

For single-frame series (the common case) :mod:`node.results.seg.direct` builds the
same object without highdicom's constructor, with these same values; the one-segment
build here is its fallback.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from io import BytesIO
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from scipy import ndimage

from node.contract.volume import Volume
from node.results.encode import Streamed, encode_body, iter_bytes, materialize
from node.results.seg import iod
from node.results.source import frame_keys

iod.install()

#: Frames packed at a time: bounds each Pixel Data chunk (and its temporary mask).
CHUNK_FRAMES = 32
#: From this many segments Pixel Data packs each segment inside its bounding box (one
#: ``ndimage.find_objects`` pass, about ten comparisons of the whole map); with fewer,
#: every frame is compared and packed.
FIND_OBJECTS_SEGMENTS = 8

_FRAME_CONTENT = Tag(0x00209111)
_DIMENSION_INDEX_VALUES = Tag(0x00209157)
_SEGMENT_IDENTIFICATION = Tag(0x0062000A)
_REFERENCED_SEGMENT_NUMBER = Tag(0x0062000B)
_DERIVATION_IMAGE = Tag(0x00089124)
_SOURCE_IMAGE = Tag(0x00082112)
_PER_FRAME = Tag(0x52009230)
_REFERENCED_SOP_INSTANCE_UID = 0x00081155
#: VRs whose length takes 4 bytes (after 2 reserved) in Explicit VR Little Endian.
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_PIXEL_DATA = Tag(0x7FE00010)
_ITEM = struct.Struct("<HHL")

#: What highdicom's ``_build_luts`` sets: built on first use where the object was not
#: made by its constructor.
_LUT_ATTRIBUTES = frozenset(
    {
        "_db_con",
        "_coordinate_system",
        "_is_tiled_full",
        "_dim_ind_pointers",
        "_dim_ind_col_names",
        "_missing_reference_instances",
        "_has_frame_references",
    }
)

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


class StreamedSegmentation(hd.seg.Segmentation):
    """A :class:`highdicom.seg.Segmentation` whose large values may be :class:`Streamed`.

    Reading such a value through the data set (an attribute, ``ds[tag]``, ``get_item``,
    hence pydicom's ``dcmwrite``) replaces it by its real value first; the worker's
    writer (:mod:`node.results.encode`) streams it instead. highdicom's frame queries
    (its ``_db_con`` tables) are rebuilt on first use from the made items.
    """

    def _make(self, key: Any) -> None:
        try:
            tag = Tag(key)
        except (ValueError, TypeError, OverflowError):
            return
        elem = self._dict.get(tag)
        if isinstance(elem, DataElement) and isinstance(elem._value, Streamed):
            elem._value = elem._value.materialize()

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, slice):
            self._make(key)
        return super().__getitem__(key)

    def get_item(self, key: Any, *, keep_deferred: bool = False) -> Any:
        if not isinstance(key, slice):
            self._make(key)
        return super().get_item(key, keep_deferred=keep_deferred)

    def __getattr__(self, name: str) -> Any:
        if name in _LUT_ATTRIBUTES and "_building_luts" not in self.__dict__:
            # The frame tables: dropped or not yet built.
            self.__dict__["_building_luts"] = True
            try:
                materialize(self)
                self._build_luts()
            finally:
                del self.__dict__["_building_luts"]
            return object.__getattribute__(self, name)
        return super().__getattr__(name)

    def __getstate__(self) -> dict[str, Any]:
        self._db_con  # noqa: B018 - highdicom's state needs its tables
        return super().__getstate__()


class FrameItems(Streamed):
    """Per-Frame Functional Groups Sequence of ``segments`` segments on the probe's planes.

    ``planes[p]`` is the encoded elements of plane ``p`` (1-based ``p + 1``) around the
    two per-frame ones: before Frame Content, between it and Segment Identification,
    after; ``items`` are the probe's items (their elements are shared when materialized),
    or None: the items are then read back from the bytes. Without ``identified`` the
    frames carry no Segment Identification (one segment: it is shared).
    """

    def __init__(
        self,
        items: list[Dataset] | None,
        planes: list[tuple[bytes, bytes, bytes]],
        segments: int,
        *,
        identified: bool = True,
    ):
        self.items = items
        self.planes = planes
        self.segments = segments
        self._content = _encoded_template(_frame_content(1, 1), 8)
        # One segment's identification is in the shared functional groups (not per frame).
        self._identification = (
            _encoded_template(_segment_identification(1), 2) if identified else b""
        )
        identification = len(self._identification) + 2 if identified else 0
        self._sizes = [
            sum(map(len, parts)) + len(self._content) + 8 + identification for parts in planes
        ]

    @classmethod
    def of(cls, items: list[Dataset], segments: int) -> FrameItems | None:
        """From the one-segment build's items; None when one is not as expected."""
        planes: list[tuple[bytes, bytes, bytes]] = []
        splice: _UIDSplice | None = None
        for plane, item in enumerate(items, start=1):
            if getattr(item, "is_undefined_length_sequence_item", False):
                return None
            if splice is not None:
                encoded_plane = splice.plane(item)
                if encoded_plane is not None:
                    planes.append(encoded_plane)
                    continue
            content = item.get(_FRAME_CONTENT)
            if (
                content is None
                or _SEGMENT_IDENTIFICATION in item
                or len(content.value) != 1
                or list(content.value[0].keys()) != [_DIMENSION_INDEX_VALUES]
                or list(content.value[0][_DIMENSION_INDEX_VALUES].value) != [1, plane]
            ):
                return None
            groups: tuple[list[DataElement], list[DataElement], list[DataElement]] = ([], [], [])
            for element in item.elements():
                if element.tag == _FRAME_CONTENT:
                    continue
                if not isinstance(element, DataElement) or not _ascii(element):
                    return None  # text outside ASCII would depend on the character set
                position = (element.tag > _FRAME_CONTENT) + (element.tag > _SEGMENT_IDENTIFICATION)
                groups[position].append(element)
            encoded = _encoded_groups(groups)
            if encoded is None:
                return None
            planes.append((encoded[0], encoded[1], encoded[2]))
            if plane == 1:
                splice = _UIDSplice.of(item, encoded[0])
        return cls(items, planes, segments)

    def __len__(self) -> int:
        return self.segments * sum(8 + size for size in self._sizes)

    def chunks(self) -> Iterator[bytes]:
        content, identification = self._content, self._identification
        for segment in range(1, self.segments + 1):
            number = struct.pack("<H", segment)
            parts: list[bytes] = []
            for plane, ((before, between, after), size) in enumerate(
                zip(self.planes, self._sizes, strict=True), start=1
            ):
                parts += (
                    _ITEM.pack(0xFFFE, 0xE000, size),
                    before,
                    content,
                    struct.pack("<LL", segment, plane),
                    between,
                )
                if identification:
                    parts += (identification, number)
                parts.append(after)
            yield b"".join(parts)

    @property
    def text_items(self) -> list[Dataset]:
        """Items holding every text value of the sequence (the one-segment build's, or
        the first item read back: planes differ in UIDs and numbers only), for a walk
        over text such as the character set check."""
        if self.items is None:
            return self._read(self._first_item())
        return self.items

    def _first_item(self) -> bytes:
        return next(iter(self.chunks()))[: 8 + self._sizes[0]]

    @staticmethod
    def _read(items: bytes) -> list[Dataset]:
        return read_items(_PER_FRAME, items)

    def __iter__(self) -> Iterator[Dataset]:
        """The items, each made when reached (not kept)."""
        if self.items is None:
            for chunk in self.chunks():
                yield from self._read(chunk)
            return
        shared = self._shared()
        for segment in range(1, self.segments + 1):
            identification = _segment_identification(segment)
            for plane, elements in enumerate(shared, start=1):
                yield _frame_item(elements, plane, identification)

    def _shared(self) -> list[list[DataElement]]:
        assert self.items is not None
        return [
            [
                item[element.tag]
                for element in item.elements()
                if element.tag not in (_FRAME_CONTENT, _SEGMENT_IDENTIFICATION)
            ]
            for item in self.items
        ]

    def materialize(self) -> list[Dataset]:
        return list(self)


class _UIDSplice:
    """Plane items' bytes from the first plane's: highdicom makes every Derivation Image
    item the same way from its source image, so planes differ in the source's SOP Instance
    UID (spliced into the first plane's bytes, the enclosing lengths adjusted) and in the
    elements after Derivation Image (Plane Position: encoded per plane)."""

    def __init__(self, first: Dataset, data: bytes, found: tuple[int, int, list[int]]):
        self.data = data
        self.value_offset, self.value_length, self.lengths = found
        self.derivation_keys = list(first[_DERIVATION_IMAGE].value[0].keys())
        source = first[_DERIVATION_IMAGE].value[0][_SOURCE_IMAGE].value[0]
        self.source_keys = list(source.keys())
        self.class_uid = source.ReferencedSOPClassUID

    @classmethod
    def of(cls, first: Dataset, before: bytes) -> _UIDSplice | None:
        """From the first plane's item and its encoded elements before Frame Content;
        None where they are not one Derivation Image item of one source image."""
        derivation = first.get(_DERIVATION_IMAGE)
        if (
            [e.tag for e in first.elements() if e.tag < _FRAME_CONTENT] != [_DERIVATION_IMAGE]
            or derivation is None
            or len(derivation.value) != 1
            or _SOURCE_IMAGE not in derivation.value[0]
            or len(derivation.value[0][_SOURCE_IMAGE].value) != 1
        ):
            return None
        found = _find_element(before, 0, len(before), _REFERENCED_SOP_INSTANCE_UID, [])
        return None if found is None else cls(first, before, found)

    def plane(self, item: Dataset) -> tuple[bytes, bytes, bytes] | None:
        """The item's three encoded groups, or None where it is not made like the first."""
        derivation = item.get(_DERIVATION_IMAGE)
        if derivation is None or len(derivation.value) != 1:
            return None
        derivation_item = derivation.value[0]
        sources = derivation_item.get(_SOURCE_IMAGE)
        if (
            sources is None
            or len(sources.value) != 1
            or list(derivation_item.keys()) != self.derivation_keys
            or list(sources.value[0].keys()) != self.source_keys
            or sources.value[0].ReferencedSOPClassUID != self.class_uid
        ):
            return None
        uid = str(sources.value[0].ReferencedSOPInstanceUID)
        if not uid.isascii():
            return None
        value = uid.encode() + (b"\0" if len(uid) % 2 else b"")
        delta = len(value) - self.value_length
        start = self.value_offset
        data = bytearray(self.data[: start - 2])
        data += struct.pack("<H", len(value))
        data += value
        data += self.data[start + self.value_length :]
        for offset in self.lengths:
            (length,) = struct.unpack_from("<L", data, offset)
            struct.pack_into("<L", data, offset, length + delta)
        rest: tuple[list[DataElement], list[DataElement]] = ([], [])
        for element in item.elements():
            if element.tag in (_DERIVATION_IMAGE, _FRAME_CONTENT):
                continue
            if element.tag < _FRAME_CONTENT or not isinstance(element, DataElement):
                return None
            if not _ascii(element):
                return None
            rest[element.tag > _SEGMENT_IDENTIFICATION].append(element)
        encoded = _encoded_groups(rest)
        if encoded is None:
            return None
        return bytes(data), encoded[0], encoded[1]


def _find_element(
    data: bytes, start: int, end: int, tag: int, lengths: list[int]
) -> tuple[int, int, list[int]] | None:
    """Where ``tag`` (a short-length element) is in Explicit VR Little Endian ``data``:
    its value's offset and length, and the offsets of the lengths of the sequences and
    items around it. None when absent or inside an undefined length."""
    position = start
    while position + 8 <= end:
        group, number, vr = struct.unpack_from("<HH2s", data, position)
        if (group << 16 | number) == tag:
            (length,) = struct.unpack_from("<H", data, position + 6)
            return position + 8, length, lengths
        if vr.decode("latin-1") in _LONG_VRS:
            (length,) = struct.unpack_from("<L", data, position + 8)
            if length == 0xFFFFFFFF:
                return None
            value = position + 12
            if vr == b"SQ":
                item = value
                while item + 8 <= value + length:
                    (item_length,) = struct.unpack_from("<L", data, item + 4)
                    if item_length == 0xFFFFFFFF:
                        return None
                    found = _find_element(
                        data,
                        item + 8,
                        item + 8 + item_length,
                        tag,
                        [*lengths, position + 8, item + 4],
                    )
                    if found is not None:
                        return found
                    item += 8 + item_length
            position = value + length
        else:
            (length,) = struct.unpack_from("<H", data, position + 6)
            position += 8 + length
    return None


def read_items(tag: int, items: bytes) -> list[Dataset]:
    """The items of a sequence ``tag`` from their Explicit VR Little Endian bytes, as
    pydicom reads them."""
    header = struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, b"SQ", len(items))
    read = read_dataset(BytesIO(header + items), is_implicit_VR=False, is_little_endian=True)
    return list(read[tag].value)


def _ascii(element: DataElement) -> bool:
    """Whether an element (nested items too) holds text in ASCII only."""
    if element.VR == "SQ":
        return all(_ascii(inner) for item in element.value for inner in item.elements())
    value = element.value
    values = value if isinstance(value, list | tuple) or hasattr(value, "append") else [value]
    return all(not isinstance(v, str) or v.isascii() for v in values)


def _frame_content(segment: int, plane: int) -> DataElement:
    content = Dataset()
    content.add(DataElement(_DIMENSION_INDEX_VALUES, "UL", [segment, plane]))
    return DataElement(_FRAME_CONTENT, "SQ", [content])


def _encoded_template(element: DataElement, tail: int) -> bytes:
    """The element's bytes but its last ``tail`` (the numbers packed per frame)."""
    holder = Dataset()
    holder.add(element)
    body = encode_body(holder)
    assert body is not None
    return b"".join(iter_bytes(body))[:-tail]


class PackedFrames(Streamed):
    """BINARY Pixel Data: frames in segment then plane order, packed a few at a time.

    ``frame_slices[p]`` is the volume slice of plane ``p``. Only the slices and the
    rectangle inside each segment's bounding box are compared and packed; other frames
    are zeros. ``boxes`` are those boxes where known (``(z, y, x)`` slices holding each
    segment, None: empty; the Analysis finds them), else they are found here. Padded to
    an even length with ``"0"``, as highdicom does.
    """

    def __init__(
        self,
        segment_numbers: np.ndarray,
        frame_slices: list[int],
        segments: int,
        boxes: Sequence[Any] | None = None,
    ):
        self.segment_numbers = segment_numbers
        self.frame_slices = np.asarray(frame_slices, dtype=np.intp)
        self.segments = segments
        planes, rows, columns = segment_numbers.shape
        self.frame_bytes = rows * columns // 8
        self.size = segments * planes * self.frame_bytes
        self._boxes: list[Any] | None = None if boxes is None else list(boxes)

    def __len__(self) -> int:
        return self.size + self.size % 2

    def boxes(self) -> list[Any]:
        """``(z, y, x)`` slices holding each segment (None: empty): its bounding box, or
        the whole map for fewer than :data:`FIND_OBJECTS_SEGMENTS` segments."""
        if self._boxes is None:
            if self.segments < FIND_OBJECTS_SEGMENTS:  # a few whole-map passes are cheaper
                whole = tuple(slice(0, size) for size in self.segment_numbers.shape)
                self._boxes = [whole] * self.segments
            else:
                found = ndimage.find_objects(self.segment_numbers, max_label=self.segments)
                self._boxes = list(found) + [None] * (self.segments - len(found))
        return self._boxes

    def chunks(self) -> Iterator[bytes | memoryview]:
        planes = self.segment_numbers.shape[0]
        for segment, box in enumerate(self.boxes(), start=1):
            for start in range(0, planes, CHUNK_FRAMES):
                frames = np.zeros((min(CHUNK_FRAMES, planes - start), self.frame_bytes), np.uint8)
                if box is not None:
                    self._pack(segment, box, start, frames)
                yield frames.data.cast("B")
        if self.size % 2:
            yield b"0"

    def _pack(self, segment: int, box: Any, start: int, frames: np.ndarray) -> None:
        """Write the frames ``start..`` of ``segment`` that cross its box into ``frames``."""
        z, y, x = box
        slices = self.frame_slices[start : start + len(frames)]
        inside = np.flatnonzero((slices >= z.start) & (slices < z.stop))
        if not len(inside):
            return
        planes = _planes(self.segment_numbers, slices[inside])
        _, rows, columns = self.segment_numbers.shape
        if columns % 8 == 0:  # each row a whole number of bytes: pack the box's bytes only
            first, last = x.start // 8, -(-x.stop // 8)
            region = planes[:, y, first * 8 : last * 8] == segment
            packed = np.packbits(region, axis=-1, bitorder="little")
            frames.reshape(len(frames), rows, columns // 8)[inside, y, first:last] = packed
            return
        masks = np.zeros((len(inside), rows, columns), dtype=bool)
        masks[:, y, x] = planes[:, y, x] == segment
        frames[inside] = np.packbits(masks.reshape(len(inside), -1), axis=1, bitorder="little")

    def materialize(self) -> bytes:
        return b"".join(self.chunks())


def _planes(volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """``volume[slices]``: a view where the slices are consecutive (either way), else a copy."""
    if len(slices) > 1:
        step = int(slices[1] - slices[0])
        if step in (1, -1) and bool(np.all(np.diff(slices) == step)):
            first, last = int(slices[0]), int(slices[-1])
            return volume[first : (last + step if last + step >= 0 else None) : step]
    return volume[slices]


def build_binary_seg(
    volume: Volume,
    segment_numbers: np.ndarray,
    descriptions: Sequence[hd.seg.SegmentDescription],
    build: Build,
    boxes: Sequence[Any] | None = None,
) -> StreamedSegmentation | None:
    """The BINARY SEG of ``segment_numbers`` (values 1..len(descriptions)), every frame kept.

    ``build`` is highdicom's construction with every argument but the descriptions and
    the pixel array bound (``omit_empty_frames=False``); ``boxes`` as for
    :class:`PackedFrames`. Returns None where the fast path
    does not apply (see :func:`packable`; sources not one per plane; per-frame items not
    as expected): the caller then builds through highdicom. ``segment_numbers`` is kept
    (not copied) until the object is written.
    """
    if not packable(volume, segment_numbers) or not descriptions:
        return None
    segments = len(descriptions)
    empty = np.broadcast_to(np.zeros((1, 1, 1), dtype=segment_numbers.dtype), segment_numbers.shape)
    seg = build(descriptions[:1], empty)
    frame_slices = _frame_slices(seg, volume)
    if frame_slices is None:
        return None
    if segments > 1:
        items = FrameItems.of(list(seg.PerFrameFunctionalGroupsSequence), segments)
        if items is None:
            return None
        # One segment's identification is shared; several segments' are per frame.
        del seg.SharedFunctionalGroupsSequence[0][_SEGMENT_IDENTIFICATION]
        seg.SegmentSequence = list(descriptions)
        seg.NumberOfFrames = len(frame_slices) * segments
        if "DimensionOrganizationType" in seg:
            del seg.DimensionOrganizationType  # highdicom infers "3D" for one segment only
        seg[_PER_FRAME]._value = items
        object.__delattr__(seg, "_db_con")  # the probe's frame tables: rebuilt on use
    seg[_PIXEL_DATA]._value = PackedFrames(segment_numbers, frame_slices, segments, boxes)
    seg.__class__ = StreamedSegmentation
    return seg  # type: ignore[return-value]


def _encoded_groups(groups: Sequence[list[DataElement]]) -> list[bytes] | None:
    """Each group of elements encoded as a data set body, or None when one of them is
    left to pydicom (:func:`encode_body` declines it)."""
    encoded = []
    for group in groups:
        holder = Dataset()
        for element in group:
            holder.add(element)
        body = encode_body(holder)
        if body is None:
            return None
        encoded.append(b"".join(iter_bytes(body)))
    return encoded
