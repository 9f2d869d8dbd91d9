"""The Analysis works inside each segment's bounding box and gives what whole-volume
masks gave: measurements, slices of largest area and outlines, value for value.

The reference (:class:`_WholeVolume`) is the implementation the box version replaced,
kept here: one full-volume boolean mask per segment.
"""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from node.contract.plugin import Prediction
from node.contract.template import ResultTemplate, load_template
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results import analysis as analysis_module
from node.results import measure
from node.results.analysis import Analysis, segment_boxes
from node.results.contour import outlines

_KINDS = {
    "volume_mm3": ("volume", "mm3"),
    "mean_hu": ("mean", "[hnsf'U]"),
    "min_hu": ("min", "[hnsf'U]"),
    "max_hu": ("max", "[hnsf'U]"),
    "std_hu": ("std", "[hnsf'U]"),
    "diameter_mm": ("largest_axial_diameter", "mm"),
    "surface_mm2": ("surface_area", "mm2"),
}
_LABELS = (1, 2, 3)


def _template_text(labels: tuple[int, ...], kinds: dict[str, tuple[str, str]]) -> str:
    lines = [
        "format_version: 2",
        "name: boxes",
        "description: Analysis in bounding boxes.",
        "algorithm:",
        "  name: boxes",
        '  version: "1.0.0"',
        "  family: {value: '123110', scheme: DCM, meaning: Artificial Intelligence}",
        "  manufacturer: ainode",
        '  device_uid: "2.25.1234"',
        "output:",
        "  series_description: AI boxes",
        "  content_label: BOXES",
        "measurements:",
    ]
    for key, (kind, unit) in kinds.items():
        lines += [
            f"  - key: {key}",
            "    concept: {value: '118565006', scheme: SCT, meaning: Volume}",
            f'    unit: "{unit}"',
            f"    compute: {kind}",
        ]
    lines.append("segments:")
    for label in labels:
        lines += [
            f"  - label_value: {label}",
            f"    label: Blob {label}",
            f"    tracking_id: blob-{label}",
            "    category: {value: '49755003', scheme: SCT, meaning: Morphologically Abnormal"
            " Structure}",
            "    type: {value: '4147007', scheme: SCT, meaning: Mass}",
            f"    colour: [{label * 2}, 100, 80]",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> ResultTemplate:
    path = tmp_path_factory.mktemp("boxes") / "boxes.yaml"
    path.write_text(_template_text(_LABELS, _KINDS), encoding="utf-8")
    return load_template(path)


def _volume(values: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    return Volume(array=values, spacing=spacing, affine=np.eye(4), datasets=())


class _WholeVolume:
    """The Analysis before bounding boxes: one full-volume mask per segment."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis

    def measurements(self, label: int) -> dict[str, float]:
        volume = self.analysis.volume
        mask = self.analysis.mask(label)
        got = {}
        for spec in self.analysis.template.measurements:
            assert spec.compute is not None
            value = measure.compute(spec.compute, spec.unit, mask, volume.array, volume.spacing)
            if math.isfinite(value):
                got[spec.key] = value
        return got

    def largest_slice(self, label: int) -> int | None:
        return measure.largest_area_slice(self.analysis.mask(label))

    def outlines(self, label: int, slice_index: int) -> list[np.ndarray]:
        return outlines(self.analysis.mask(label)[slice_index])


@st.composite
def _label_maps(draw: st.DrawFn) -> np.ndarray:
    """Blobs of labels 0-3 (later ones over earlier), noise, holes, single voxels;
    some labels empty, some touching the border."""
    shape = draw(st.tuples(st.integers(1, 6), st.integers(1, 16), st.integers(1, 16)))
    label_map = np.zeros(shape, dtype=np.uint8)
    z, y, x = np.indices(shape)
    for _ in range(draw(st.integers(0, 4))):
        centre = [draw(st.floats(-1, n)) for n in shape]
        radii = [draw(st.floats(0.4, n + 1)) for n in shape]
        inside = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radii, strict=True))
        label_map[inside <= 1.0] = draw(st.sampled_from((0, *_LABELS)))
    if draw(st.booleans()):  # sparse noise: holes and stray voxels
        noise = draw(arrays(np.uint8, shape, elements=st.integers(0, 3)))
        keep = draw(arrays(np.bool_, shape, elements=st.booleans()))
        label_map = np.where(keep, label_map, noise).astype(np.uint8)
    if draw(st.booleans()):  # one voxel of one label
        where = tuple(draw(st.integers(0, n - 1)) for n in shape)
        label_map[where] = draw(st.sampled_from(_LABELS))
    return label_map


@settings(max_examples=150, deadline=None)
@given(
    label_map=_label_maps(),
    spacing=st.tuples(
        st.sampled_from([0.5, 1.0, 2.5]),
        st.sampled_from([0.3, 0.7, 1.5]),
        st.sampled_from([0.3, 1.0, 2.0]),
    ),
)
def test_box_analysis_equals_whole_volume_masks(
    template: ResultTemplate, label_map: np.ndarray, spacing: tuple[float, float, float]
) -> None:
    values = np.random.default_rng(int(label_map.sum())).normal(0, 100, label_map.shape)
    volume = _volume(values.astype(np.float32), spacing)
    analysis = Analysis(volume, Prediction(label_map=label_map), template)
    reference = _WholeVolume(analysis)
    for label in _LABELS:
        assert analysis.measurements[label] == reference.measurements(label)
        largest = reference.largest_slice(label)
        assert analysis.largest_slices.get(label) == largest
        for slice_index in range(label_map.shape[0]):
            got = analysis.outlines(label, slice_index)
            want = reference.outlines(label, slice_index)
            assert len(got) == len(want)
            for polygon, expected in zip(got, want, strict=True):
                assert polygon.dtype == expected.dtype
                np.testing.assert_array_equal(polygon, expected)


def test_box_of_each_segment(template: ResultTemplate) -> None:
    label_map = np.zeros((4, 8, 9), dtype=np.uint8)
    label_map[1:3, 2:5, 0:9] = 1
    label_map[3, 7, 8] = 3
    volume = _volume(np.zeros(label_map.shape, dtype=np.float32), (1.0, 1.0, 1.0))
    analysis = Analysis(volume, Prediction(label_map=label_map), template)
    assert analysis.box(1) == (slice(1, 3), slice(2, 5), slice(0, 9))
    assert analysis.box(2) is None and analysis.box_mask(2) is None
    assert analysis.box(3) == (slice(3, 4), slice(7, 8), slice(8, 9))
    assert analysis.measurements[2] == {"volume_mm3": 0.0, "surface_mm2": 0.0}
    assert analysis.largest_slices == {1: 1, 3: 3}


def test_hundred_segments_without_a_mask_per_segment(tmp_path: Path) -> None:
    """100 segments on 120x512x512: half the label map's size is more than the
    Analysis allocates (a mask per segment is as large as the map, 200 times over; the
    label count's 8 MiB chunk is the largest allocation left)."""
    labels = tuple(range(1, 101))
    path = tmp_path / "hundred.yaml"
    path.write_text(
        _template_text(labels, {"volume_mm3": ("volume", "mm3"), "mean_hu": ("mean", "[hnsf'U]")}),
        encoding="utf-8",
    )
    template = load_template(path)
    shape = (120, 512, 512)
    label_map = np.zeros(shape, dtype=np.uint8)
    for index, label in enumerate(labels):  # a 4x5x5 grid of boxes
        z, y, x = index // 25, (index // 5) % 5, index % 5
        rows, columns = slice(y * 102 + 2, y * 102 + 100), slice(x * 102 + 2, x * 102 + 100)
        label_map[z * 30 + 2 : z * 30 + 28, rows, columns] = label
    volume = _volume(np.ones(shape, dtype=np.float32), (1.0, 1.0, 1.0))
    prediction = Prediction(label_map=label_map)
    Analysis(volume, prediction, template)  # warm
    tracemalloc.start()
    analysis = Analysis(volume, prediction, template)
    slices = analysis.largest_slices
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert analysis.measurements[100] == {"volume_mm3": 26 * 98 * 98, "mean_hu": 1.0}
    assert slices[1] == 2 and len(slices) == 100
    assert peak < 0.5 * label_map.nbytes, peak


@settings(max_examples=100, deadline=None)
@given(label_map=_label_maps(), slab_voxels=st.sampled_from([1, 40, 2**23]))
def test_compared_slab_boxes_equal_find_objects(label_map: np.ndarray, slab_voxels: int) -> None:
    """A few segments' boxes come from slab comparisons (merged across slabs): the
    boxes ``ndimage.find_objects`` gives."""
    expected = [
        None if box is None else tuple(box)
        for box in ndimage.find_objects(label_map, max_label=len(_LABELS))
    ]
    original = analysis_module._SLAB_VOXELS
    analysis_module._SLAB_VOXELS = slab_voxels
    try:
        assert segment_boxes(label_map, len(_LABELS)) == expected
    finally:
        analysis_module._SLAB_VOXELS = original


@st.composite
def _any_label_maps(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int16, np.bool_]))
    elements = st.booleans() if dtype is np.bool_ else st.integers(0, 5)
    shape = st.tuples(st.integers(0, 3), st.integers(1, 5), st.integers(1, 5))
    return draw(arrays(dtype, shape, elements=elements))


@settings(max_examples=200, deadline=None)
@given(label_map=_any_label_maps(), declared=st.sets(st.integers(1, 6)))
def test_undeclared_labels_are_the_values_outside_the_template(
    label_map: np.ndarray, declared: set[int]
) -> None:
    """The ``max`` shortcut finds what counting every value finds (gaps, values above,
    boolean and signed maps)."""
    expected = sorted(set(np.unique(label_map).tolist()) - {0} - declared)
    assert analysis_module.undeclared_labels(label_map, declared) == expected


def test_undeclared_label_below_the_largest_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "gap.yaml"
    path.write_text(_template_text((1, 3), {"volume_mm3": ("volume", "mm3")}), encoding="utf-8")
    label_map = np.zeros((2, 3, 3), dtype=np.uint8)
    label_map[0, 0, 0] = 3
    label_map[1, 1, 1] = 2
    volume = _volume(np.zeros(label_map.shape, dtype=np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(TemplateError, match=r"label values \[2\]"):
        Analysis(volume, Prediction(label_map=label_map), load_template(path))
