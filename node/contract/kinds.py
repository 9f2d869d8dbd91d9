"""Kinds of result objects, result profiles, and how result files are tagged.

A destination's *result profile* is the list of kinds it receives, e.g. ``[seg, sr]``
(the default) or ``[sc, gsps]`` for a PACS that shows neither SEG nor SR.

The worker builds the union of its destinations' profiles and writes each object as
``<tag>_<SOPInstanceUID>.dcm``; the exporter sends a destination only the files whose
tag is in :func:`profile_tags` of its profile. A tag is the kind, except where an
object's content depends on the rest of the profile:

* ``sr`` references the SEG of the profile: the BINARY ``seg``, else the
  ``fractional_seg``; with neither, the BINARY SEG is built (and kept on disk) but not
  sent. An SR that references the FRACTIONAL SEG is tagged ``sr.fractional_seg``.
  An SR never references a LABELMAP SEG: dciodvfy (2026-09) rejects Referenced
  Segment Numbers for Label Map Segmentation Storage.
* ``ko`` lists the profile's other objects: ``ko.gsps+sc`` lists the GSPS and the SC
  images. Each variant has its own deterministic UIDs.
* ``reg`` is built only from a prediction with a registration (a routine that
  declares ``needs_prior``); such a job builds nothing that needs a label map.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class ResultKind(StrEnum):
    """What a result object is."""

    SEG = "seg"  #: BINARY Segmentation (default)
    LABELMAP_SEG = "labelmap_seg"  #: LABELMAP Segmentation (Label Map Segmentation Storage)
    FRACTIONAL_SEG = "fractional_seg"  #: FRACTIONAL (probability) SEG, when the plugin gives them
    SR = "sr"  #: Comprehensive 3D SR, TID 1500
    GSPS = "gsps"  #: Grayscale Softcopy Presentation State with outlines and labels
    SC = "sc"  #: Secondary Capture copies of the source slices with the overlay burned in
    KO = "ko"  #: Key Object Selection listing the other objects of the profile
    REG = "reg"  #: Spatial Registration of a prior series (routines that declare needs_prior)
    PMAP = "pmap"  #: Parametric Map of the plugin's attribution (explainability) map
    HEATMAP_SC = "heatmap_sc"  #: Secondary Capture heat maps of the attribution, not diagnostic
    DERIVED = "derived"  #: Derived series of the source's IOD (image-to-image routines)
    DERIVED_SC = "derived_sc"  #: The derived image as Secondary Capture


#: What a destination gets when its configuration names no profile.
DEFAULT_PROFILE: tuple[ResultKind, ...] = (ResultKind.SEG, ResultKind.SR)
#: SEG kinds.
SEG_KINDS: tuple[ResultKind, ...] = (
    ResultKind.SEG,
    ResultKind.LABELMAP_SEG,
    ResultKind.FRACTIONAL_SEG,
)
#: SEG kinds an SR may reference, in the order it picks one from its profile.
SR_SEG_KINDS: tuple[ResultKind, ...] = (ResultKind.SEG, ResultKind.FRACTIONAL_SEG)
#: Order in which kinds are built (an SR needs its SEG, a KO everything else).
BUILD_ORDER: tuple[ResultKind, ...] = (
    *SEG_KINDS,
    ResultKind.SR,
    ResultKind.GSPS,
    ResultKind.SC,
    ResultKind.REG,
    ResultKind.PMAP,
    ResultKind.HEATMAP_SC,
    ResultKind.DERIVED,
    ResultKind.DERIVED_SC,
    ResultKind.KO,
)
#: Kinds built from ``Prediction.attribution``.
ATTRIBUTION_KINDS: tuple[ResultKind, ...] = (ResultKind.PMAP, ResultKind.HEATMAP_SC)
#: Kinds built from ``Prediction.derived_image``.
DERIVED_KINDS: tuple[ResultKind, ...] = (ResultKind.DERIVED, ResultKind.DERIVED_SC)


def check_profile(kinds: Iterable[str]) -> tuple[ResultKind, ...]:
    """Parse and check a profile; raise ``ValueError`` saying what is wrong.

    A profile is non-empty, names each kind once, and a ``ko`` needs something to list.
    """
    parsed: list[ResultKind] = []
    for kind in kinds:
        try:
            value = ResultKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in ResultKind)
            raise ValueError(f"unknown result kind {kind!r} (known: {known})") from None
        if value in parsed:
            raise ValueError(f"result kind {kind!r} is listed twice")
        parsed.append(value)
    if not parsed:
        raise ValueError("a result profile lists at least one kind")
    if parsed == [ResultKind.KO]:
        raise ValueError("'ko' lists the other result objects; add at least one more kind")
    return tuple(parsed)


def sr_seg_kind(profile: Iterable[ResultKind]) -> ResultKind:
    """The SEG kind an SR in this profile references."""
    kinds = set(profile)
    return next((kind for kind in SR_SEG_KINDS if kind in kinds), ResultKind.SEG)


def sr_tag(seg_kind: ResultKind) -> str:
    return "sr" if seg_kind is ResultKind.SEG else f"sr.{seg_kind.value}"


def ko_tag(listed: Iterable[str]) -> str:
    return "ko." + "+".join(sorted(set(listed)))


def profile_tags(profile: Iterable[str]) -> frozenset[str]:
    """File tags a destination with this profile receives."""
    kinds = check_profile(profile)
    tags: list[str] = []
    for kind in kinds:
        if kind is ResultKind.SR:
            tags.append(sr_tag(sr_seg_kind(kinds)))
        elif kind is not ResultKind.KO:
            tags.append(kind.value)
    if ResultKind.KO in kinds:
        tags.append(ko_tag(tags))
    return frozenset(tags)


def required_tags(tags: Iterable[str]) -> frozenset[str]:
    """``tags`` plus what they depend on (an SR needs the SEG it references)."""
    needed = set(tags)
    for tag in list(needed):
        kind, _, qualifier = tag.partition(".")
        if kind == "sr":
            needed.add(qualifier or ResultKind.SEG.value)
        elif kind == "ko":
            needed |= required_tags(qualifier.split("+"))
    return frozenset(needed)


def tag_kind(tag: str) -> ResultKind:
    """The kind of a file tag (``sr.labelmap_seg`` is an ``sr``)."""
    return ResultKind(tag.partition(".")[0])


#: File-name prefixes written before result profiles existed (``SEG_<uid>.dcm``).
_LEGACY_TAGS = {"SEG": "seg", "SR": "sr"}


def file_name(tag: str, sop_instance_uid: str) -> str:
    return f"{tag}_{sop_instance_uid}.dcm"


def file_tag(name: str) -> str | None:
    """The tag of a result file name, or None when it is not one."""
    if not name.endswith(".dcm") or "_" not in name:
        return None
    tag = name[: -len(".dcm")].rpartition("_")[0]
    tag = _LEGACY_TAGS.get(tag, tag)
    try:
        tag_kind(tag)
    except ValueError:
        return None
    return tag
