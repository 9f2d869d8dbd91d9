"""What a configured model declares, as contract values: its labels mapped to the
template's label values, what it accepts, the resources it needs and the input it was
validated on (from the ``models:`` section of the configuration).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from node.config import (
    AcceptsSettings,
    ResourceSettings,
    ValidatedInputSettings,
)
from node.contract.plugin import Accepts, Resources, ValidatedInput
from node.contract.template import ResultTemplate
from node.errors import PluginError


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


def resolve_label_values(
    names: Sequence[str], template: ResultTemplate, explicit: dict[str, int]
) -> dict[int, int]:
    """Output channel → template label value.

    Channel 0 is the background. Other channels take ``explicit[name]`` or the
    template segment whose tracking id or label equals the name (case, spaces,
    ``-`` and ``_`` ignored).

    Raises
    ------
    PluginError
        When a name has no segment, or a value is not in the template.
    """
    known = {segment.label_value for segment in template.segments}
    by_name: dict[str, int] = {}
    for segment in template.segments:
        by_name[_normalise(segment.tracking_id)] = segment.label_value
        by_name[_normalise(segment.label)] = segment.label_value
    unknown = set(explicit) - set(names)
    if unknown:
        raise PluginError(f"label_values names unknown labels: {', '.join(sorted(unknown))}")
    mapping: dict[int, int] = {}
    for channel, name in enumerate(names):
        if channel == 0:
            continue
        value = explicit.get(name, by_name.get(_normalise(name)))
        if value is None:
            raise PluginError(
                f"label {name!r} (channel {channel}) has no segment in template "
                f"{template.name!r}; add one or map it with label_values"
            )
        if value not in known:
            raise PluginError(f"label {name!r} maps to {value}, not a label of {template.name!r}")
        mapping[channel] = value
    return mapping


def accepts_from(settings: AcceptsSettings) -> Accepts:
    return Accepts(
        modalities=tuple(settings.modalities),
        body_parts=tuple(settings.body_parts),
        min_slices=settings.min_slices,
        max_slices=settings.max_slices,
        slice_spacing_mm=settings.slice_spacing_mm,
        pixel_spacing_mm=settings.pixel_spacing_mm,
        min_matrix=settings.min_matrix,
        planes=tuple(settings.planes),
        max_obliquity_deg=settings.max_obliquity_deg,
    )


def resources_from(settings: ResourceSettings) -> Resources:
    return Resources(needs_gpu=settings.needs_gpu, gpu_memory_mb=settings.gpu_memory_mb)


def validated_input(settings: ValidatedInputSettings) -> ValidatedInput:
    """The plugin-contract value of a configured model's ``validated_on``."""
    return ValidatedInput(
        modalities=tuple(settings.modalities),
        sop_classes=tuple(settings.sop_classes),
        slice_thickness_mm=settings.slice_thickness_mm,
        pixel_spacing_mm=settings.pixel_spacing_mm,
        kernels=tuple(settings.kernels),
        contrast=settings.contrast,
        photometric_interpretations=tuple(settings.photometric_interpretations),
        min_bits_stored=settings.min_bits_stored,
        noise=settings.noise,
        max_duplicate_slices=settings.max_duplicate_slices,
        max_metal_fraction=settings.max_metal_fraction,
        metal_threshold=settings.metal_threshold,
        max_streak_index=settings.max_streak_index,
        max_clipped_fraction=settings.max_clipped_fraction,
    )
