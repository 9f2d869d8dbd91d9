"""A single-frame series' BINARY SEG built directly: highdicom's object, not its constructor.

``highdicom.seg.Segmentation.__init__`` spends most of its time on the source images,
one at a time: plane positions as datasets, a derivation item and a per-frame functional
groups item of fresh datasets per frame, then its frame tables. Here the object is
assembled as highdicom assembles it, in the same steps, but:

* the module attributes (SOP Common, Patient, Study, General Series and Equipment,
  Specimen, Contributing Equipment, Content Identification, Segment Sequence, Dimension
  Index) come from the same highdicom helpers the constructor calls, once each;
* the plane order is the constructor's (``np.unique`` of the distances along the normal),
  computed with numpy from every source's Image Position (Patient);
* the per-frame items are bytes (:class:`node.results.seg.frames.FrameItems`): the first
  plane's item is highdicom's own (``_get_pffg_item``), encoded once; every other plane is
  that encoding with its source's SOP Instance UID and its Image Position (Patient) spliced
  in (the enclosing lengths adjusted);
* Source Image Sequence and Referenced Series Sequence (:class:`References`) are the
  items highdicom makes for the first source, encoded once, each source's UID spliced in;
* Pixel Data is :class:`node.results.seg.frames.PackedFrames` (inside the Analysis'
  bounding boxes where given); highdicom's frame tables (``_build_luts``) are built on
  first use.

These four values stay bytes until written (or read: then made as pydicom items).

The written bytes equal ``dcmwrite`` of highdicom's construction: tests/test_seg_direct.py.

Falls back (returns None, the caller then builds through highdicom) outside the case it
reproduces: another highdicom version (the steps are its 0.28 constructor's); a
Segmentation Type other than BINARY; constructor arguments other than those
:func:`node.results.seg.segmentation.build_seg` passes (plane positions, pixel
measures, orientation, tiling, palettes, omitted empty frames, …); multi-frame or tiled
sources; sources without a patient frame of reference (no Frame of Reference UID, slide
coordinates) or without Image Position (Patient), Pixel Spacing or Slice Thickness;
sources of several studies, series, SOP classes, frame sizes or frames of reference, or
whose orientations differ; a label map of another frame size than the sources, or
``rows x columns`` not a multiple of 8 (:func:`~node.results.seg.frames.packable`);
duplicate plane positions; source UIDs or positions whose bytes cannot be spliced (not
ASCII, an element left to pydicom).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from highdicom import image as hd_image
from highdicom import spatial as hd_spatial
from highdicom.content import (
    PixelMeasuresSequence,
    PlaneOrientationSequence,
    PlanePositionSequence,
    _add_content_information,
)
from highdicom.seg import sop as hd_seg_sop
from highdicom.volume import ChannelDescriptor
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import DS, format_number_as_ds

from node.contract.volume import Volume
from node.results.encode import Streamed
from node.results.header_values import HeaderValues
from node.results.seg import frames

#: highdicom versions whose constructor these steps reproduce.
VERSIONS = ("0.28.",)
#: ``build_seg``'s constructor arguments besides the sources, pixels and descriptions.
_ARGUMENTS = frozenset(
    {
        "series_instance_uid",
        "series_number",
        "sop_instance_uid",
        "instance_number",
        "series_description",
        "manufacturer",
        "manufacturer_model_name",
        "software_versions",
        "device_serial_number",
        "contributing_equipment",
        "content_label",
        "content_description",
        "segmentation_type",
        "omit_empty_frames",
    }
)
_PATIENT = hd.CoordinateSystemNames.PATIENT
_REFERENCED_SOP_INSTANCE_UID = 0x00081155
_IMAGE_POSITION_PATIENT = 0x00200032
_NUMBER_OF_FRAMES = 0x00280008
#: Study, Series, Rows, Columns, Frame of Reference, orientation, SOP Class: one per series.
_ONE_PER_SERIES = (
    0x0020000D,
    0x0020000E,
    0x00280010,
    0x00280011,
    0x00200052,
    0x00200037,
    0x00080016,
)
_UL = struct.Struct("<L")
_ITEM = struct.Struct("<HHL")
_SQ = struct.Struct("<HH2s2xL")
_US = struct.Struct("<H")
_SOP_INSTANCE_UID = 0x00080018
_SOP_CLASS_UID = 0x00080016
_SOURCE_IMAGES = 0x00082112
_REFERENCED_SERIES = 0x00081115
_REFERENCED_INSTANCES = 0x0008114A


class _Splice:
    """Encoded bytes with one short element's value replaceable: the bytes around the
    value and the lengths of the sequences and items enclosing it (adjusted per value)."""

    def __init__(self, data: bytes, tag: int):
        found = frames._find_element(data, 0, len(data), tag, [])
        if found is None:
            raise LookupError(tag)
        offset, length, offsets = found
        self.length = length
        cuts = sorted(offsets)
        self.lengths = [struct.unpack_from("<L", data, at)[0] for at in cuts]
        starts = [0, *(at + 4 for at in cuts)]
        self.parts = [data[a:b] for a, b in zip(starts, [*cuts, offset - 2], strict=True)]
        self.rest = data[offset + length :]

    def with_value(self, value: bytes) -> bytes:
        """The bytes with ``value`` (even length) in place of the element's value."""
        delta = len(value) - self.length
        out = [self.parts[0]]
        for length, part in zip(self.lengths, self.parts[1:], strict=True):
            out += (_UL.pack(length + delta), part)
        out += (_US.pack(len(value)), value, self.rest)
        return b"".join(out)


def _uid_value(uid: str | None) -> bytes | None:
    """A UID's encoded value (null-padded), or None where it cannot be spliced."""
    if uid is None:
        return None
    value = str(uid)
    if not value.isascii() or len(value) > 64:
        return None
    return value.encode() + (b"\0" if len(value) % 2 else b"")


class _Positions:
    """Image Position (Patient) values as highdicom writes them (``DS(v, auto_format=True)``),
    each distinct source value formatted once."""

    def __init__(self) -> None:
        self._formatted: dict[tuple[Any, ...], str] = {}

    def value(self, position: Sequence[Any]) -> bytes | None:
        parts = []
        for number in position:
            key = (
                type(number),
                number if isinstance(number, str) else float(number),
                getattr(number, "original_string", None),
                getattr(number, "auto_format", None),
            )
            text = self._formatted.get(key)
            if text is None:
                text = self._formatted[key] = str(DS(number, auto_format=True))
            parts.append(text)
        joined = "\\".join(parts)
        if not joined.isascii() or len(joined) > 0xFFFE:
            return None
        encoded = joined.encode()
        return encoded + (b" " if len(encoded) % 2 else b"")


def _value(source: Dataset, tag: int) -> Any:
    """``source[tag].value`` (None when absent), without the look-up's layers for an
    element already converted."""
    element = source._dict.get(tag)  # type: ignore[call-overload]
    if element is None:
        return None
    if type(element) is DataElement:
        return element.value
    return source[tag].value


def _series_values(source: Dataset, values: HeaderValues) -> list[Any]:
    return [values.get(source, tag) for tag in _ONE_PER_SERIES]


def _single_series(sources: Sequence[Dataset], rows: int, columns: int) -> bool:
    """Every source a single-frame image of one series, frame size and frame of reference,
    in patient coordinates, with one orientation (what the constructor checks or assumes)."""
    first = sources[0]
    if (
        hd_spatial.get_image_coordinate_system(first) is not _PATIENT
        or "ImagePositionPatient" not in first
        or "PixelSpacing" not in first
        or "SliceThickness" not in first
        or hd.utils.is_multiframe_image(first)
        or hd.utils.is_tiled_image(first)
        or (int(first.Rows), int(first.Columns)) != (rows, columns)
    ):
        return False
    values = HeaderValues()  # each distinct value converted once, not once per source
    criteria = _series_values(first, values)
    return all(
        _series_values(source, values) == criteria
        and _IMAGE_POSITION_PATIENT in source._dict
        and _NUMBER_OF_FRAMES not in source._dict
        for source in sources
    )


class References(Streamed):
    """Source Image Sequence (``series`` None) or Referenced Series Sequence (its one item,
    the items in Referenced Instance Sequence, then ``series``: the encoded Series
    Instance UID) of encoded reference items, as highdicom's ``_add_source_image_references``
    makes them for one series."""

    def __init__(self, tag: int, items: list[bytes], series: bytes | None = None):
        self.tag = tag
        self.items = items
        self.series = series
        self._length = sum(map(len, items))

    def __len__(self) -> int:
        if self.series is None:
            return self._length
        return 8 + 12 + self._length + len(self.series)

    def chunks(self) -> Iterator[bytes]:
        if self.series is not None:
            body = 12 + self._length + len(self.series)
            yield _ITEM.pack(0xFFFE, 0xE000, body) + _SQ.pack(0x0008, 0x114A, b"SQ", self._length)
        yield b"".join(self.items)
        if self.series is not None:
            yield self.series

    @property
    def text_items(self) -> list[Dataset]:
        """None: the items hold UIDs only (not text to check against a character set)."""
        return []

    def materialize(self) -> list[Dataset]:
        return frames.read_items(self.tag, b"".join(self.chunks()))


def _references(
    sources: Sequence[Dataset], uids: list[bytes]
) -> tuple[References, References] | None:
    """Source Image and Referenced Series Sequences: highdicom's items for the first
    source, encoded once, with each source's SOP Instance UID spliced in."""
    scratch = Dataset()
    hd_image._Image._add_source_image_references(
        scratch,  # type: ignore[arg-type]  # sets two attributes only
        source_images=sources[:1],
        further_source_images=None,
    )
    series_item = scratch.ReferencedSeriesSequence[0]
    if sorted(series_item.keys()) != [_REFERENCED_INSTANCES, 0x0020000E]:
        return None
    encoded = frames._encoded_groups(
        [list(scratch.SourceImageSequence[0].elements()), [series_item[0x0020000E]]]
    )
    if encoded is None:
        return None
    body, series = encoded
    try:
        splice = _Splice(body, _REFERENCED_SOP_INSTANCE_UID)
    except LookupError:
        return None
    items = []
    for uid in uids:
        item = splice.with_value(uid)
        items.append(_ITEM.pack(0xFFFE, 0xE000, len(item)) + item)
    return References(_SOURCE_IMAGES, items), References(_REFERENCED_SERIES, items, series)


def build_direct_seg(
    volume: Volume,
    segment_numbers: np.ndarray,
    descriptions: Sequence[hd.seg.SegmentDescription],
    arguments: Mapping[str, Any],
    boxes: Sequence[Any] | None = None,
) -> frames.StreamedSegmentation | None:
    """highdicom's BINARY SEG of ``segment_numbers`` (values 1..len(descriptions)), every
    frame kept, or None outside the case reproduced (module docstring).

    ``arguments`` are the constructor's keywords besides ``source_images``,
    ``pixel_array`` and ``segment_descriptions``; ``boxes`` as for
    :class:`~node.results.seg.frames.PackedFrames`. ``segment_numbers`` is kept (not
    copied) until the object is written.
    """
    sources = list(volume.datasets)
    if (
        not hd.__version__.startswith(VERSIONS)
        or set(arguments) - _ARGUMENTS
        or hd.seg.SegmentationTypeValues(arguments.get("segmentation_type", "BINARY"))
        is not hd.seg.SegmentationTypeValues.BINARY
        or arguments.get("omit_empty_frames", True) is not False
        or not descriptions
        or not frames.packable(volume, segment_numbers)
        or len(sources) != segment_numbers.shape[0]
        or not _single_series(sources, *segment_numbers.shape[1:3])
    ):
        return None
    # Plane order: the constructor's sort of the distances along the normal.
    orientation = PlaneOrientationSequence(
        coordinate_system=_PATIENT, image_orientation=sources[0].ImageOrientationPatient
    )
    positions = np.array([source.ImagePositionPatient for source in sources], dtype=float)
    if positions.shape != (len(sources), 3):
        return None
    normal = hd_spatial.get_normal_vector(
        orientation[0].ImageOrientationPatient,
        index_convention=hd_spatial.VOLUME_INDEX_CONVENTION,
    )
    distances = hd_spatial._get_slice_distances(positions, normal)
    _, sort_index = np.unique(distances, return_index=True)
    if len(sort_index) != len(sources):
        return None  # duplicate positions: the constructor raises
    values = [_uid_value(_value(source, _SOP_INSTANCE_UID)) for source in sources]
    uids = [uid for uid in values if uid is not None]
    if len(uids) != len(sources):
        return None
    planes = _plane_items(sources, uids, sort_index, len(descriptions) > 1)
    references = _references(sources, uids)
    if planes is None or references is None:
        return None

    seg = object.__new__(frames.StreamedSegmentation)
    _module_attributes(seg, sources[0], descriptions, arguments)
    _multiframe_attributes(seg, sources, segment_numbers.shape, references)
    segments = len(descriptions)
    shared = Dataset()
    shared.PlaneOrientationSequence = orientation
    measures = PixelMeasuresSequence(
        pixel_spacing=sources[0].PixelSpacing,
        slice_thickness=sources[0].SliceThickness,
        spacing_between_slices=sources[0].get("SpacingBetweenSlices", None),
    )
    if "SpacingBetweenSlices" not in measures[0]:
        spacing, _ = hd_spatial.get_volume_positions(
            image_positions=positions,  # type: ignore[arg-type]  # highdicom passes an array
            image_orientation=orientation[0].ImageOrientationPatient,
        )
        if spacing is not None:
            measures[0].SpacingBetweenSlices = format_number_as_ds(spacing)
    shared.PixelMeasuresSequence = measures
    if segments == 1:
        shared.add(frames._segment_identification(1))
    seg.SharedFunctionalGroupsSequence = [shared]
    organization = Dataset()
    organization.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    seg.DimensionOrganizationSequence = [organization]
    if len(sources) > 1 and segments == 1:
        spacing, _ = hd_spatial.get_volume_positions(
            image_positions=positions,  # type: ignore[arg-type]
            image_orientation=orientation[0].ImageOrientationPatient,
            sort=False,
        )
        if spacing is not None and spacing > 0.0:
            seg.DimensionOrganizationType = "3D"
    seg.NumberOfFrames = len(sources) * segments
    # Streamed values are set after the elements are made (pydicom checks a value's type).
    seg.add(DataElement(frames._PER_FRAME, "SQ", []))
    seg[frames._PER_FRAME]._value = frames.FrameItems(
        None, planes, segments, identified=segments > 1
    )
    seg.PixelData = b""  # "OB or OW" until written, as highdicom leaves it
    seg[frames._PIXEL_DATA]._value = frames.PackedFrames(
        segment_numbers, sort_index.tolist(), segments, boxes
    )
    return seg


def _plane_items(
    sources: Sequence[Dataset], uids: list[bytes], sort_index: np.ndarray, identified: bool
) -> list[tuple[bytes, bytes, bytes]] | None:
    """Each plane's encoded elements around Frame Content and Segment Identification,
    in plane order: the first from highdicom's own item, the others spliced from it."""
    first = sources[int(sort_index[0])]
    item = hd_image._Image._get_pffg_item(
        dimension_index_values=[1, 1],
        plane_position=PlanePositionSequence(
            coordinate_system=_PATIENT, image_position=first.ImagePositionPatient
        ),
        derivation_source_image_items=[
            hd_image._Image._get_derivation_source_image_item(
                source_image=first, frame_number=None, locations_preserved=True
            )
        ],
        coordinate_system=_PATIENT,
        derivation=hd_seg_sop._DERIVATION_CODE,
    )
    encoded = frames.FrameItems.of([item], 2 if identified else 1)
    if encoded is None:
        return None
    before, between, after = encoded.planes[0]
    if after:
        return None
    try:
        derivation = _Splice(before, _REFERENCED_SOP_INSTANCE_UID)
        position = _Splice(between, _IMAGE_POSITION_PATIENT)
    except LookupError:
        return None
    values = _Positions()
    planes = []
    for index in sort_index.tolist():
        ipp = values.value(_value(sources[index], _IMAGE_POSITION_PATIENT))
        if ipp is None:
            return None
        planes.append((derivation.with_value(uids[index]), position.with_value(ipp), b""))
    return planes


def _module_attributes(
    seg: hd.seg.Segmentation,
    source: Dataset,
    descriptions: Sequence[hd.seg.SegmentDescription],
    arguments: Mapping[str, Any],
) -> None:
    """What ``Segmentation.__init__`` sets before ``_init_multiframe_image``, by its helpers."""
    hd.base.SOPClass.__init__(
        seg,
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=arguments["series_instance_uid"],
        series_number=arguments["series_number"],
        sop_instance_uid=arguments["sop_instance_uid"],
        instance_number=arguments["instance_number"],
        sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
        manufacturer=arguments["manufacturer"],
        modality="SEG",
        transfer_syntax_uid=hd_seg_sop.ExplicitVRLittleEndian,
        patient_id=source.PatientID,
        patient_name=source.PatientName,
        patient_birth_date=source.PatientBirthDate,
        patient_sex=source.PatientSex,
        accession_number=source.AccessionNumber,
        study_id=source.StudyID,
        study_date=source.StudyDate,
        study_time=source.StudyTime,
        referring_physician_name=getattr(source, "ReferringPhysicianName", None),
        manufacturer_model_name=arguments["manufacturer_model_name"],
        device_serial_number=arguments["device_serial_number"],
        software_versions=arguments["software_versions"],
        specific_character_set=source.get("SpecificCharacterSet"),
        series_description=arguments.get("series_description"),
    )
    seg.copy_specimen_information(source)
    seg.copy_patient_and_study_information(source)
    seg._add_contributing_equipment(arguments.get("contributing_equipment"), source)
    numbers = np.array([int(item.SegmentNumber) for item in descriptions])
    kind = hd.seg.SegmentationTypeValues.BINARY
    hd.seg.Segmentation._check_segment_numbers(numbers, kind)
    seg.SegmentationType = kind.value
    content_label = arguments.get("content_label")
    _add_content_information(
        dataset=seg,
        content_label=content_label if content_label is not None else f"{source.Modality}_SEG",
        content_description=arguments.get("content_description"),
        content_creator_name=None,
        content_creator_identification=None,
    )
    photometric = seg._configure_color(
        segmentation_type=kind,
        palette_color_lut_transformation=None,
        icc_profile=None,
        segment_descriptions=descriptions,
        max_described_segment=int(numbers.max()),
    )
    seg.PhotometricInterpretation = photometric.value
    seg._add_segment_descriptions(descriptions, kind)
    seg.SegmentsOverlap = hd.seg.SegmentsOverlapValues.NO.value  # a map of segment numbers


def _multiframe_attributes(
    seg: hd.seg.Segmentation,
    sources: Sequence[Dataset],
    shape: tuple[int, ...],
    references: tuple[References, References],
) -> None:
    """What ``_init_multiframe_image`` sets besides the functional groups and frames."""
    source = sources[0]
    seg.FrameOfReferenceUID = source.FrameOfReferenceUID
    seg.PositionReferenceIndicator = getattr(source, "PositionReferenceIndicator", None)
    seg.BitsAllocated = 1
    seg.SamplesPerPixel = 1
    seg.BitsStored = 1
    seg.HighBit = 0
    seg.PixelRepresentation = 0
    seg.ImageType = ["DERIVED", "PRIMARY"]
    seg.PresentationLUTShape = (
        "INVERSE" if seg.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
    )
    for tag, value in zip((_SOURCE_IMAGES, _REFERENCED_SERIES), references, strict=True):
        seg.add(DataElement(tag, "SQ", []))
        seg[tag]._value = value  # made when written or read
    seg.LossyImageCompression = getattr(source, "LossyImageCompression", "00")
    if seg.LossyImageCompression == "01":
        if "LossyImageCompressionRatio" in source:
            seg.LossyImageCompressionRatio = source.LossyImageCompressionRatio
        if "LossyImageCompressionMethod" in source:
            seg.LossyImageCompressionMethod = source.LossyImageCompressionMethod
    seg.Rows = shape[1]
    seg.Columns = shape[2]
    seg.DimensionIndexSequence = hd_image._DimensionIndexSequence(
        coordinate_system=_PATIENT,
        functional_groups_module="segmentation-multi-frame-functional-groups",
        channel_dimensions=[ChannelDescriptor(0x0062000B)],
    )
