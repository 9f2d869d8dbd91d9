"""Source headers as the result builders need them, and the character set of the results.

Real sources differ from what highdicom expects in two ways that must not fail a job:

* Research anonymisers remove Type 2 patient and study attributes (PatientSex,
  PatientBirthDate, AccessionNumber…); highdicom reads some of them as attributes of the
  source. :func:`buildable_volume` gives the builders headers with each of them present,
  empty where the source lacks it, so every result writes them empty (PS3.5 7.4.5).
* highdicom checks Specific Character Set against an enum that lacks values real PACS send
  (``['', 'ISO 2022 IR 87']``: an empty first value means the default repertoire;
  ``ISO 2022 IR 149``, which highdicom's enum misspells as IR 159). The builders see headers
  without it (highdicom then checks nothing) and :func:`set_character_set` writes the
  source's value on every result once it is built.

Text values are decoded when the headers are prepared, so nothing depends on the character
set afterwards until pydicom encodes the result on write.
"""

from __future__ import annotations

import dataclasses
import logging
from codecs import lookup as codec_lookup
from collections.abc import Iterator, Sequence
from typing import Any

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import AMBIGUOUS_VR, PersonName

from node.contract.volume import Volume

log = logging.getLogger(__name__)

#: Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1):
#: every result has them, empty when the source does not say.
TYPE_2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
#: Where the result's own text cannot be written in the source's character set.
UNICODE = "ISO_IR 192"
#: Value representations encoded with Specific Character Set (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})
#: Python codecs that encode every character.
#: Raw elements converted when a header is prepared: their value may need the source's
#: character set (text, sequences, VRs read as UN or implicitly, or ambiguous ones).
_DECODED = _TEXT_VRS | {"SQ", "UN", *(str(vr) for vr in AMBIGUOUS_VR)}
_ALL_OF_UNICODE = frozenset({"utf-8", "gb18030"})
#: Terms of the default repertoire (ASCII).
_DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
_SPECIFIC_CHARACTER_SET = Tag("SpecificCharacterSet")

CharacterSet = str | list[str] | None


def character_set(source: Dataset) -> CharacterSet:
    """The source's Specific Character Set as it says it (None when absent or empty)."""
    element = source.get(_SPECIFIC_CHARACTER_SET)
    if element is None or element.value in (None, "", []):
        return None
    value = element.value
    if isinstance(value, MultiValue | list | tuple):
        return [str(term) for term in value]
    return str(value)


def shareable(raw: RawDataElement) -> bool:
    """Whether a raw element reads the same in any data set: its value is held (not
    deferred) and its VR, explicit or (for a public tag read as implicit VR) the
    dictionary's, is neither text, a sequence, UN nor ambiguous."""
    if raw.value is None and raw.length:
        return False
    vr = raw.VR
    if vr is None:
        shareable = _IMPLICIT_SHAREABLE.get(raw.tag)
        if shareable is None:
            shareable = _IMPLICIT_SHAREABLE[raw.tag] = (
                not raw.tag.is_private
                and dictionary_has_tag(raw.tag)
                and dictionary_VR(raw.tag) not in _DECODED
            )
        return shareable
    return vr not in _DECODED


#: :func:`shareable` of public tags read as implicit VR, by tag.
_IMPLICIT_SHAREABLE: dict[int, bool] = {}


#: Text decoded once per series: ``(tag, VR, raw value, character set) -> (element, its
#: state as converted)``.
_Decoded = dict[tuple[int, str | None, bytes, tuple[str, ...]], tuple[DataElement, dict[str, Any]]]


def _charset_key(source: Dataset) -> tuple[str, ...]:
    """The Python codecs ``source``'s text is decoded with, as a :data:`_Decoded` key part."""
    charset = source.original_character_set or source._character_set
    return (charset,) if isinstance(charset, str) else tuple(charset)


def _decoded(
    source: Dataset,
    tag: BaseTag,
    raw: RawDataElement,
    cache: _Decoded,
    charset: tuple[str, ...],
) -> DataElement:
    """``source[tag]`` (converted with the source's character set, whose codecs are
    ``charset``: :func:`_charset_key`, once per header); a public tag's single value
    (most text of a series is the same in every header) is decoded once per ``cache``
    and each header gets its own element of it (the state of the first, at its own
    offset in its file)."""
    if tag.is_private or not isinstance(raw.value, bytes):
        return source[tag]
    key = (tag, raw.VR, raw.value, charset)
    done = cache.get(key)
    if done is None:
        element = source[tag]
        if isinstance(element.value, str | PersonName):  # immutable: shareable
            cache[key] = (element, dict(element.__dict__))
        return element
    # DataElement(tag, VR, value, raw.value_tell, ..., already_converted=True) without
    # its constructor: the same attributes.
    element = _new_element(DataElement)
    element.__dict__.update(done[1])
    element.file_tell = raw.value_tell
    return element


_new_element = DataElement.__new__


def buildable_header(source: Dataset, decoded: _Decoded | None = None) -> Dataset:
    """A copy of a source header with its text decoded, without Specific Character Set
    and with every :data:`TYPE_2_PATIENT_STUDY` attribute, Manufacturer and (with a Frame
    of Reference) Position Reference Indicator: empty where the source lacks them.

    The elements are shared with ``source`` (nothing in it changes); the copy is for the
    builders only. Raw elements whose value does not depend on the character set (numbers,
    UIDs, codes, dates: most of a header) are shared still raw, converted when a builder
    reads them (a raw element is immutable); the others (text, sequences, UN, ambiguous
    VRs, private tags read as implicit VR) are converted here with the source's character set.
    """
    header = Dataset()
    if hasattr(source, "file_meta"):
        header.file_meta = source.file_meta
    elements = header._dict
    charset: tuple[str, ...] | None = None  # pydicom works it out anew on each look-up
    for tag, element in source._dict.items():
        if (
            isinstance(element, RawDataElement)
            and not shareable(element)
            and tag != _SPECIFIC_CHARACTER_SET
        ):
            # converted, decoding with the source's character set
            if decoded is None:
                element = source[tag]
            else:
                charset = _charset_key(source) if charset is None else charset
                element = _decoded(source, tag, element, decoded, charset)
        elements[tag] = element
    elements.pop(_SPECIFIC_CHARACTER_SET, None)
    for keyword, tag in _TYPE_2_TAGS:
        if tag not in elements:
            setattr(header, keyword, "")
    # A derived image copies the source's header: Type 2 of General Equipment and Frame
    # of Reference (when it has one) too.
    if _MANUFACTURER not in elements:
        header.Manufacturer = ""
    if _FRAME_OF_REFERENCE in elements and _POSITION_REFERENCE not in elements:
        header.PositionReferenceIndicator = ""
    return header


_TYPE_2_TAGS = tuple((keyword, Tag(keyword)) for keyword in TYPE_2_PATIENT_STUDY)
_MANUFACTURER = Tag("Manufacturer")
_FRAME_OF_REFERENCE = Tag("FrameOfReferenceUID")
_POSITION_REFERENCE = Tag("PositionReferenceIndicator")


def buildable_volume(volume: Volume) -> Volume:
    """``volume`` with :func:`buildable_header` headers (a multi-frame header stays one
    object for all its frames)."""
    prepared: dict[int, Dataset] = {}
    headers = []
    decoded: _Decoded = {}
    for source in volume.datasets:
        if id(source) not in prepared:
            prepared[id(source)] = buildable_header(source, decoded)
        headers.append(prepared[id(source)])
    return dataclasses.replace(volume, datasets=tuple(headers))


def _codecs(terms: Sequence[str]) -> list[str] | None:
    """Python codecs of the terms of a Specific Character Set; None if one is unknown."""
    codecs = []
    for index, term in enumerate(terms):
        term = term.strip()
        if term in _DEFAULT_REPERTOIRE or (index == 0 and not term):
            codecs.append("ascii")
        elif term in python_encoding:
            codecs.append(python_encoding[term])
        else:
            return None
    return codecs


def _text_values(dataset: Dataset) -> Iterator[tuple[str, str]]:
    """``(keyword, text)`` of every text value in ``dataset``, nested ones included."""
    for element in dataset.iterall():
        if element.VR not in _TEXT_VRS or element.value is None:
            continue
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        for value in values:
            if value is not None:
                yield element.keyword or str(element.tag), str(value)


def _non_ascii_texts(dataset: Dataset, seen: set[int] | None = None) -> Iterator[str]:
    """Every text value with a character outside ASCII, nested ones included, in no
    particular order (a walk over the elements as stored: most are skipped by VR). An
    item shared by several sequences (the result builders share code items) is walked
    once."""
    seen = set() if seen is None else seen
    for element in dataset._dict.values():
        if isinstance(element, RawDataElement):
            element = dataset[element.tag]
        vr = element.VR
        if vr == "SQ":
            # A streamed SEG's per-frame items name the few that hold all their text.
            for item in getattr(element.value, "text_items", element.value):
                if id(item) not in seen:
                    seen.add(id(item))
                    yield from _non_ascii_texts(item, seen)
            continue
        if vr not in _TEXT_VRS or element.value is None:
            continue
        values = element.value if isinstance(element.value, MultiValue) else (element.value,)
        for value in values:
            if value is not None:
                text = str(value)
                if not text.isascii():
                    yield text


def _unencodable(dataset: Dataset, codecs: list[str]) -> list[str]:
    """Keywords of the text values with a character none of ``codecs`` encodes."""
    if any(codec_lookup(codec).name in _ALL_OF_UNICODE for codec in codecs):
        return []

    def encodes(character: str) -> bool:
        for codec in codecs:
            try:
                character.encode(codec)
            except UnicodeError:
                continue
            return True
        return False

    if all(all(encodes(c) for c in text if not c.isascii()) for text in _non_ascii_texts(dataset)):
        return []  # the usual case, found without iterall's ordered walk of every element
    failing: list[str] = []
    for keyword, text in _text_values(dataset):
        unencodable = not text.isascii() and not all(encodes(c) for c in text if not c.isascii())
        if unencodable and keyword not in failing:
            failing.append(keyword)
    return failing


def set_character_set(dataset: Dataset, charset: CharacterSet, what: str) -> None:
    """Write ``charset`` (the source's) as the result's Specific Character Set.

    When some text of the result (a site template's code meaning, say) has a character
    that character set cannot represent, the result is written in Unicode (``ISO_IR
    192``) instead, with a warning naming the attributes: its text stays what it is,
    never replaced by ``?``.
    """
    terms = [] if charset is None else [charset] if isinstance(charset, str) else charset
    codecs = _codecs(terms or [""])
    failing = ["SpecificCharacterSet"] if codecs is None else _unencodable(dataset, codecs)
    if failing:
        log.warning(
            "%s: text not representable in the source's character set %s, written as %s "
            "attributes=%s",
            what,
            "\\".join(terms) or "(default)",
            UNICODE,
            ",".join(failing),
        )
        dataset.SpecificCharacterSet = UNICODE
    elif charset is None:
        if _SPECIFIC_CHARACTER_SET in dataset:
            del dataset[_SPECIFIC_CHARACTER_SET]
    else:
        dataset.SpecificCharacterSet = charset


def frame_source(volume: Volume, frame: int) -> tuple[Dataset, list[int] | None, str]:
    """``(source image, its frame numbers, key)`` of frame ``frame`` of ``volume``.

    The frame numbers are None for a single-frame source; the key is the source's SOP
    Instance UID, with ``"/<frame number>"`` for a frame of a multi-frame source (the
    key of per-frame result UIDs).
    """
    source = volume.datasets[frame]
    number = volume.frame_number(frame)
    key = str(source.SOPInstanceUID)
    if number is None:
        return source, None, key
    return source, [number], f"{key}/{number}"


def frame_keys(volume: Volume) -> list[str]:
    """:func:`frame_source` keys of every frame of ``volume``, in volume order."""
    return [frame_source(volume, frame)[2] for frame in range(volume.shape[0])]


def source_image_reference(source: Dataset, frame_numbers: list[int] | None = None) -> Dataset:
    """A Source Image Sequence item referencing ``source`` (the frame of a multi-frame one)."""
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_numbers is not None:
        reference.ReferencedFrameNumber = frame_numbers[0]
    return reference
