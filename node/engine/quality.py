"""The input-quality gate's measurements and decisions (array and header logic only).

Before inference the node measures a series against what its routine was
validated on (:class:`~node.contract.plugin.ValidatedInput`):

* header checks: modality, SOP class, slice thickness, pixel spacing (PixelSpacing,
  else ImagerPixelSpacing, as the node gives 2D images to routines), kernel
  (ConvolutionKernel), contrast (ContrastBolusAgent), photometric interpretation,
  bit depth (BitsStored);
* slice layout from the headers: positions missing from the regular grid and
  positions that occur twice (:func:`slice_layout`);
* image measurements: noise (:func:`noise_sd`, robust spread of a Laplacian in
  homogeneous tissue), metal (:func:`metal_fraction`), streaks or motion
  (:func:`streak_index`) and clipping (:func:`clipped_fraction`; per frame for 2D
  images, :func:`image_clipped_fraction`).

Each failed check is then given the rule's action (``run``, ``warn`` or ``skip``,
:class:`~node.config.QualitySettings`) and :func:`decide` returns the most severe.
The plumbing that reads files and records events is :mod:`node.orchestration.gate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from node.config import QualitySettings
from node.contract import image_attributes
from node.contract.plugin import ValidatedInput

#: HU range counted as homogeneous soft tissue for the noise estimate (CT).
TISSUE_HU = (-150.0, 150.0)
#: HU range of soft tissue (not lung, air or bone) for the streak index; wide enough to
#: keep tissue that streaks brighten or darken by a few hundred HU.
BODY_HU = (-400.0, 450.0)
#: A CT series whose minimum is at or below this (HU) has air's floor there: its low end
#: does not count as clipped.
_AIR_FLOOR_HU = -1000.0
#: Percentile of the Laplacian's magnitude that stands for a slice's high-frequency energy.
_STREAK_PERCENTILE = 95.0
#: The Laplacian ``[[0,1,0],[1,-4,1],[0,1,0]]`` multiplies white-noise variance by 20.
_LAPLACIAN_GAIN = float(np.sqrt(20.0))
#: Median absolute deviation of a normal distribution, in standard deviations.
_MAD_TO_SD = 1.0 / 0.6744897501960817
#: Fewest homogeneous pixels in a slice for its own noise estimate.
_MIN_PIXELS = 200
#: Positions closer than this (mm) are the same slice.
_SAME_POSITION_MM = 1e-3
#: A step longer than (1 + this) x the regular spacing leaves slices out.
_GAP_TOLERANCE = 0.05
_SEVERITY = {"run": 0, "warn": 1, "skip": 2}


@dataclass(frozen=True)
class SliceLayout:
    """Where a series' slices lie along the slice normal.

    Attributes
    ----------
    count
        Images (localizers excluded).
    spacing_mm
        The regular spacing (median of the distinct steps); 0 for one slice.
    missing
        Slices the regular grid has but the series lacks.
    duplicates
        Images at a position another image already has.
    gaps
        ``(index after which, step in mm)`` for each step longer than the spacing.
    """

    count: int
    spacing_mm: float
    missing: int
    duplicates: int
    gaps: tuple[tuple[int, float], ...] = ()


def slice_positions(headers: Sequence[Dataset]) -> np.ndarray:
    """Sorted positions (mm) of the non-localizer images along the first image's normal."""
    images = [
        ds
        for ds in headers
        if not image_attributes.is_localizer(ds) and "ImagePositionPatient" in ds
    ]
    if not images or "ImageOrientationPatient" not in images[0]:
        return np.zeros(0)
    orientation = [float(v) for v in images[0].ImageOrientationPatient]
    normal = np.cross(orientation[:3], orientation[3:6])
    return np.sort(
        [float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in images]
    )


def slice_layout(headers: Sequence[Dataset]) -> SliceLayout:
    """Missing and duplicated slice positions of a series, from its headers alone."""
    positions = slice_positions(headers)
    if positions.size < 2:
        return SliceLayout(int(positions.size), 0.0, 0, 0)
    steps = np.diff(positions)
    same = steps < _SAME_POSITION_MM
    distinct = steps[~same]
    if distinct.size == 0:
        return SliceLayout(int(positions.size), 0.0, 0, int(same.sum()))
    spacing = float(np.median(distinct))
    missing = 0
    gaps: list[tuple[int, float]] = []
    index = 0
    for step in steps:
        if step >= _SAME_POSITION_MM:
            index += 1
            if step > (1.0 + _GAP_TOLERANCE) * spacing:
                missing += max(1, round(step / spacing) - 1)
                gaps.append((index - 1, float(step)))
    return SliceLayout(int(positions.size), spacing, missing, int(same.sum()), tuple(gaps))


def without_duplicate_positions(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The images of a series with every repeated slice position dropped (first kept)."""
    kept: list[Dataset] = []
    seen: list[np.ndarray] = []
    for ds in datasets:
        if image_attributes.is_localizer(ds) or "ImagePositionPatient" not in ds:
            kept.append(ds)
            continue
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        if any(np.linalg.norm(position - other) < _SAME_POSITION_MM for other in seen):
            continue
        seen.append(position)
        kept.append(ds)
    return kept


# -- image measurements (arrays shaped (slices, rows, columns), real-world values) ----
#
# The measurements walk the volume once, slice by slice (a slice stays in the cache for
# every measurement on it), into buffers allocated once per volume. The homogeneous
# pixels are found by a separable 5x5 erosion on the flattened slice; the Laplacian is
# computed over the rows they reach (the same float32 operations, in the same order, as
# :func:`_laplacian`) and selected there.


def _laplacian(image: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of one slice, on its interior pixels."""
    centre = image[1:-1, 1:-1]
    return (image[:-2, 1:-1] + image[2:, 1:-1] + image[1:-1, :-2] + image[1:-1, 2:]) - 4.0 * centre


def homogeneous_mask(image: np.ndarray, window: tuple[float, float] = TISSUE_HU) -> np.ndarray:
    """Interior pixels of one slice whose 5x5 neighbourhood lies within ``window``."""
    inside = ((image >= window[0]) & (image <= window[1])).view(np.uint8)
    # A separable 5x5 minimum is the binary erosion by a square (and much faster).
    eroded = ndimage.minimum_filter(inside, size=5, mode="constant", cval=0)
    return eroded[1:-1, 1:-1].astype(bool)


class _Slices:
    """Per-slice homogeneous masks and Laplacians, into buffers reused across slices.

    Everything is computed on the flattened slice. ``laplacian_of(image)[mask]`` with
    ``mask = homogeneous_mask(image, window)`` equals, value for value and in the same
    order, ``_laplacian(image)[homogeneous_mask(image, window)]`` (the module functions):
    the mask's pixels are those at least 2 from the border whose 5x5 box lies within the
    window, and the Laplacian is the same float32 operations in the same order.
    """

    def __init__(self, rows: int, columns: int) -> None:
        self.rows, self.columns = rows, columns
        size = rows * columns
        self.inside = np.empty(size, dtype=bool)
        self.above = np.empty(size, dtype=bool)
        self.first = np.empty(size, dtype=np.uint8)
        self.second = np.empty(size, dtype=np.uint8)
        self.third = np.empty(size, dtype=np.uint8)
        # The eroded mask laid out as the flattened slice: its 2-pixel border stays False.
        self.eroded = np.zeros(size, dtype=bool)
        # The Laplacian laid out as the flattened slice (set where last computed).
        self.laplacian = np.zeros(size, dtype=np.float32)
        self.centre = np.empty(size, dtype=np.float32)

    def homogeneous_mask(self, image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
        """The pixels of ``image`` whose 5x5 box lies within ``window``, flattened (the
        buffer is reused by the next call).

        A separable 5x5 erosion in flat indices: a box that runs over a row's end wraps
        onto the next row, and is centred on one of the border columns, which are cleared.
        """
        flat = image.reshape(-1)
        columns, size = self.columns, flat.size
        inside = np.greater_equal(flat, window[0], out=self.inside).view(np.uint8)
        below = np.less_equal(flat, window[1], out=self.above).view(np.uint8)
        np.bitwise_and(inside, below, out=inside)
        # Pixels i..i+4 at [i] ...
        h2, h4, h5 = self.first[: size - 1], self.second[: size - 3], self.first[: size - 4]
        np.bitwise_and(inside[:-1], inside[1:], out=h2)
        np.bitwise_and(h2[:-2], h2[2:], out=h4)
        np.bitwise_and(h4[:-1], inside[4:], out=h5)
        # ... then rows r..r+4 of those: the box centred 2 rows and 2 columns further on.
        v2 = self.second[: size - 4 - columns]
        v4 = self.third[: size - 4 - 3 * columns]
        np.bitwise_and(h5[:-columns], h5[columns:], out=v2)
        np.bitwise_and(v2[: -2 * columns], v2[2 * columns :], out=v4)
        eroded = self.eroded.view(np.uint8)[2 * columns + 2 : size - 2 * columns - 2]
        np.bitwise_and(v4[:-columns], h5[4 * columns :], out=eroded)
        by_row = self.eroded.reshape(self.rows, columns)
        by_row[:, :2] = False
        by_row[:, -2:] = False
        return self.eroded

    def homogeneous(self, image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
        """Flat indices (into ``image``) of the pixels whose 5x5 box lies within ``window``."""
        return np.flatnonzero(self.homogeneous_mask(image, window))

    def extent(self, mask: np.ndarray) -> tuple[int, int]:
        """Flat indices from the first row of a flattened ``mask`` with a True to past
        the last such row ((0, 0) when there is none)."""
        rows: np.ndarray = np.any(mask.reshape(self.rows, self.columns), axis=1)
        first = int(np.argmax(rows))
        if not rows[first]:
            return 0, 0
        return first * self.columns, (self.rows - int(np.argmax(rows[::-1]))) * self.columns

    def laplacian_of(
        self, image: np.ndarray, start: int | None = None, stop: int | None = None
    ) -> np.ndarray:
        """:func:`_laplacian` of a C-contiguous float32 ``image``, laid out as its flattened
        pixels and valid at its interior pixels from flat index ``start`` to ``stop``
        (default: all); the buffer is reused by the next call.

        Contiguous float32 operations over the slice: cheaper than gathering the five
        neighbours of the homogeneous pixels. Non-finite pixels outside the mask may make
        infinities or NaN here, which nothing reads.
        """
        flat = image.reshape(-1)
        columns = self.columns
        start = columns if start is None else max(start, columns)
        stop = flat.size - columns if stop is None else min(stop, flat.size - columns)
        if stop <= start:
            return self.laplacian
        values = self.laplacian[start:stop]
        with np.errstate(over="ignore", invalid="ignore"):
            np.add(
                flat[start - columns : stop - columns],
                flat[start + columns : stop + columns],
                out=values,
            )
            values += flat[start - 1 : stop - 1]
            values += flat[start + 1 : stop + 1]
            values -= np.multiply(flat[start:stop], 4.0, out=self.centre[start:stop])
        return self.laplacian

    def values(self, image: np.ndarray, window: tuple[float, float], every: int = 0) -> np.ndarray:
        """The Laplacian at the homogeneous pixels of ``image`` (float32, C-contiguous);
        with ``every``, only every ``max(1, count // every)``-th of them."""
        mask = self.homogeneous_mask(image, window)
        if not every:
            start, stop = self.extent(mask)
            return self.laplacian_of(image, start, stop)[start:stop][mask[start:stop]]
        at = np.flatnonzero(mask)
        return self.laplacian_of(image)[at[:: max(1, at.size // every)]]


def _measurable(array: np.ndarray) -> bool:
    return array.ndim == 3 and min(array.shape[1:]) >= 7


def _slice32(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image, dtype=np.float32)


def _slice_values(array: np.ndarray, window: tuple[float, float]) -> list[np.ndarray]:
    """Per slice, the Laplacian at its homogeneous pixels (one slice in memory at a time)."""
    if not _measurable(array):
        return [np.zeros(0, dtype=np.float32) for _ in range(array.shape[0])]
    slices = _Slices(*array.shape[1:])
    return [slices.values(_slice32(image), window) for image in array]


def _median(values: np.ndarray) -> float:
    """``np.median(values)``, on a copy whose middle value(s) are first put in place (one
    partition): the median depends on the values only, and numpy's own partition (two or
    three points) then has almost nothing to do."""
    work = np.array(values, copy=True)
    size = work.size
    if size > 2:
        half = size // 2
        work.partition(half)
        if size % 2 == 0:  # the other middle value: the largest below
            below = int(np.argmax(work[:half]))
            work[[half - 1, below]] = work[[below, half - 1]]
    return float(np.median(work, overwrite_input=True))


def _robust_sd(values: np.ndarray) -> float:
    median = _median(values)
    return _median(np.abs(values - median)) * _MAD_TO_SD / _LAPLACIAN_GAIN


#: At most this many Laplacian values per slice enter the series' noise estimate.
_NOISE_SAMPLES_PER_SLICE = 20_000
#: At most about this many evenly spread slices enter the series' noise estimate.
_NOISE_SLICES = 64


def _noise_stride(slices: int) -> int:
    return max(1, -(-slices // _NOISE_SLICES))


def _pooled_noise(samples: list[np.ndarray]) -> float | None:
    pooled = np.concatenate(samples) if samples else np.zeros(0)
    return _robust_sd(pooled) if pooled.size >= _MIN_PIXELS else None


def noise_sd(array: np.ndarray, window: tuple[float, float] = TISSUE_HU) -> float | None:
    """Noise standard deviation in homogeneous tissue (None when there is none).

    The Laplacian removes smooth anatomy; its median absolute deviation over
    pixels whose neighbourhood stays inside ``window`` is robust to the few edges
    left, and scales to the standard deviation of white noise.
    """
    if array.ndim != 3:
        return None
    chosen = array[:: _noise_stride(array.shape[0])]
    if not _measurable(array):
        return _pooled_noise([np.zeros(0, dtype=np.float32) for _ in range(chosen.shape[0])])
    slices = _Slices(*array.shape[1:])
    samples = [slices.values(_slice32(image), window, _NOISE_SAMPLES_PER_SLICE) for image in chosen]
    return _pooled_noise(samples)


def slice_noise(array: np.ndarray, window: tuple[float, float] = TISSUE_HU) -> np.ndarray:
    """Per-slice noise estimate (NaN where a slice has too little homogeneous tissue)."""
    return np.asarray(
        [_robust_sd(v) if v.size >= _MIN_PIXELS else np.nan for v in _slice_values(array, window)]
    )


#: The streak percentile as the quantile numpy's ``percentile`` interpolates at.
_STREAK_QUANTILE = float(np.true_divide(_STREAK_PERCENTILE, 100))


#: About this many evenly spread magnitudes are sorted to look for a run of ties.
_TIE_SAMPLE = 1024
#: Sampled ranks either side of the wanted one that must share its value.
_TIE_RUN = 8


def _order_statistics(magnitudes: np.ndarray, at: int) -> tuple[np.float32, np.float32]:
    """The ``at``-th smallest of float32 ``magnitudes`` (no sign bits: from ``np.abs``)
    and the next; may partition the array in place.

    The Laplacian of whole HU values is whole: in smooth images most magnitudes share
    a few values, where numpy's partition is slow (~7x). When a sample shows a run of ties
    over the wanted rank, two counts confirm that value (exactly: both ranks lie within
    its run). Otherwise the array is partitioned as int32: the bits of a float32 without
    its sign bit order as the float does (NaN after infinity, as numpy sorts it), and
    numpy partitions int32 about twice as fast.
    """
    size = magnitudes.size
    sample = np.sort(magnitudes[:: max(1, size // _TIE_SAMPLE)])
    wanted = at * sample.size // size
    low, high = max(0, wanted - _TIE_RUN), min(sample.size - 1, wanted + _TIE_RUN)
    if sample[low] == sample[high]:  # NaN never equals: partitioned
        value = sample[wanted]
        below = np.count_nonzero(magnitudes < value)
        if below <= at and at + 1 < np.count_nonzero(magnitudes <= value):
            return value, value
    magnitudes.view(np.int32).partition(at)
    return magnitudes[at], magnitudes[at + 1 :].min()  # NaN, sorted last, if there is one


def _magnitude_percentile(magnitudes: np.ndarray) -> float:
    """``np.percentile(magnitudes, 95)`` of a float32 array of magnitudes (from
    ``np.abs``), which it partitions in place.

    numpy's ``linear`` method (the default) takes the order statistics at
    ``floor((n - 1) q)`` and the next, and interpolates between them by the fraction
    left; below is that arithmetic, operation for operation (float64 index, float32
    interpolation with a Python-float weight, as for a Python-float percentile). The two
    order statistics are found directly (:func:`_order_statistics`): numpy's own
    four-point partition (those two, the minimum and the maximum) was most of its time.
    Checked against ``np.percentile`` in tests/test_quality_scan.py.
    """
    size = magnitudes.size
    if size < 2 or magnitudes.dtype != np.float32:
        return float(np.percentile(magnitudes, _STREAK_PERCENTILE, overwrite_input=True))
    virtual = (size - 1) * _STREAK_QUANTILE  # below size - 1: there is a next one
    at = int(np.floor(virtual))
    lower, upper = _order_statistics(magnitudes, at)
    weight = virtual - at
    with np.errstate(over="ignore", invalid="ignore"):  # as in numpy (inf - inf is NaN)
        step = upper - lower
        if weight >= 0.5:
            return float(upper - step * (1 - weight))
        return float(lower + step * weight)


def _percentile(values: np.ndarray) -> float:
    """``np.percentile(np.abs(values), 95)`` (see :func:`_magnitude_percentile`)."""
    return _magnitude_percentile(np.abs(values))


def _energies(percentiles: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each slice's high percentile of its Laplacian magnitudes (``percentiles``, given at
    least where ``counts`` reaches :data:`_MIN_PIXELS`); NaN for slices with too little
    tissue."""
    if counts.size == 0:
        return np.zeros(0)
    # Slices with little tissue (the ends of a scan) are mostly edges: leave them out.
    enough = max(_MIN_PIXELS, 0.5 * float(np.median(counts)))
    return np.where(counts >= enough, percentiles, np.nan)


def slice_energy(array: np.ndarray, window: tuple[float, float] = BODY_HU) -> np.ndarray:
    """Per-slice high-frequency energy: a high percentile of the Laplacian's magnitude in
    soft tissue (NaN where a slice has too little of it)."""
    per_slice = _slice_values(array, window)
    counts = np.asarray([v.size for v in per_slice])
    percentiles = [_percentile(v) if v.size >= _MIN_PIXELS else np.nan for v in per_slice]
    return _energies(np.asarray(percentiles, dtype=float), counts)


def _streak_of(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size < 3:
        return 1.0
    median = float(np.median(values))
    return float(values.max() / median) if median > 0 else 1.0


def streak_index(array: np.ndarray, window: tuple[float, float] = BODY_HU) -> float:
    """The slice with the most high-frequency energy over the series' median (about 1).

    Metal streaks and motion put sharp bright and dark lines over a large part of
    the slices they hit, which raises a high percentile of the Laplacian there;
    noise from the dose is similar from slice to slice.
    """
    return _streak_of(slice_energy(array, window))


def metal_fraction(array: np.ndarray, threshold: float = 2500.0) -> float:
    """Fraction of voxels above ``threshold`` (HU): metal implants, dense contrast."""
    return float(np.count_nonzero(array > threshold)) / max(1, array.size)


def clipped_fraction(array: np.ndarray, *, count_low_end: bool) -> float:
    """Fraction of voxels piled at the largest value (and the smallest with ``count_low_end``).

    An image whose values were clipped to a range puts every voxel beyond it on
    the range's end; an unclipped one has a handful at its extremes. The low end
    is not counted where a floor is normal (air at -1024 HU in CT, zero
    background in MR, mammograms and radiographs, the black border around a
    fundus photograph).
    """
    total = max(1, array.size)
    fraction = float(np.count_nonzero(array == array.max())) / total
    if count_low_end:
        fraction += float(np.count_nonzero(array == array.min())) / total
    return fraction


def image_clipped_fraction(array: np.ndarray) -> float:
    """:func:`clipped_fraction` of each 2D image (frame) on its own; the largest.

    The frames of a 2D series are independent exposures (four mammography views,
    two eyes): one view clipped below another's maximum would not show in the
    series' maximum. Colour frames count every sample (a saturated channel is
    clipped). The low end is never counted: zero background is normal there.
    """
    if array.size == 0:
        return 0.0
    return max(clipped_fraction(frame, count_low_end=False) for frame in array)


@dataclass(frozen=True)
class _CtScan:
    noise: float | None
    metal_fraction: float
    streak_index: float
    maximum: float
    minimum: float
    at_maximum: int
    #: Voxels at the minimum, counted only where it lies above :data:`_AIR_FLOOR_HU` (0 else).
    at_minimum: int


#: Slices per block of :func:`_scan_ct` (a unit of work for one thread).
_SCAN_BLOCK = 16
#: Threads for :func:`_scan_ct` (numpy releases the GIL in the per-slice work). One: on
#: the shared 2-core VM two were 1.3x faster at 1000 slices when it was quiet (load 0.8),
#: no faster at 300 slices with load 2 and 1.5x slower at 1000 with load 3.5.
_SCAN_THREADS = 1


@dataclass(frozen=True)
class SliceScan:
    """What the CT scan measures of one slice on its own (:func:`scan_slice`): everything
    but the noise, whose slices depend on the series' order and length.

    Attributes
    ----------
    maximum, minimum
        The slice's extremes (the array's dtype).
    at_maximum
        Voxels at the maximum; 0 when the scan was told the series holds a larger one.
    at_minimum
        Voxels at the minimum, counted only where it lies above :data:`_AIR_FLOOR_HU`
        (0 else, or when the series holds a smaller one).
    metal
        Voxels above each metal threshold the scan was given.
    body
        Soft-tissue pixels (5x5 box within :data:`BODY_HU`).
    percentile
        The high percentile of the Laplacian's magnitude there (NaN below
        :data:`_MIN_PIXELS` pixels, or for a slice too small to measure).
    """

    maximum: np.generic
    minimum: np.generic
    at_maximum: int
    at_minimum: int
    metal: dict[float, int]
    body: int
    percentile: float


def scan_slice(
    image: np.ndarray,
    thresholds: Sequence[float],
    slices: _Slices | None = None,
    *,
    top: np.generic | None = None,
    bottom: np.generic | None = None,
) -> SliceScan:
    """Scan one 2D CT slice (HU) for :func:`measure`; the same values as the series scan.

    ``slices`` holds the work buffers (made for the slice's shape when omitted, None for
    a slice too small to measure is fine). ``top`` and ``bottom``, the largest maximum
    and smallest minimum seen so far in the series, skip counting voxels at an extreme
    that cannot be the series' own.
    """
    high, low = image.max(), image.min()
    # Counted only where the slice may hold the series' extreme (a NaN compares False,
    # so it is counted, and makes every count moot: nothing equals NaN).
    at_maximum = 0 if top is not None and high < top else int(np.count_nonzero(image == high))
    # Nor where the minimum is at air's floor or below (or NaN): the low end is not
    # counted then.
    at_minimum = (
        0
        if (bottom is not None and low > bottom) or not low > _AIR_FLOOR_HU
        else int(np.count_nonzero(image == low))
    )
    metal = {t: 0 if high <= t else int(np.count_nonzero(image > t)) for t in thresholds}
    body, percentile = 0, float("nan")
    if _measurable(image[np.newaxis]):
        if slices is None:
            slices = _Slices(*image.shape)
        image32 = _slice32(image)
        mask = slices.homogeneous_mask(image32, BODY_HU)
        body = int(np.count_nonzero(mask))
        if body >= _MIN_PIXELS:  # the least that can count (see _energies)
            # Only the rows the mask reaches.
            start, stop = slices.extent(mask)
            magnitudes = slices.laplacian_of(image32, start, stop)[start:stop][mask[start:stop]]
            percentile = _magnitude_percentile(np.abs(magnitudes, out=magnitudes))
    return SliceScan(high, low, at_maximum, at_minimum, metal, body, percentile)


def slice_scanner(shape: tuple[int, int]) -> Callable[[np.ndarray, Sequence[float]], SliceScan]:
    """:func:`scan_slice` for slices of ``shape``, its work buffers made once."""
    slices = _Slices(*shape) if min(shape) >= 7 else None
    return lambda image, thresholds: scan_slice(image, thresholds, slices)


class _Scan:
    """Per-slice results of :func:`_scan_ct`, filled block by block (blocks may run on
    different threads: each writes only its own slices). ``known`` gives slices scanned
    earlier (:func:`scan_slice`, with this threshold): only their noise is measured."""

    def __init__(
        self,
        array: np.ndarray,
        metal_threshold: float,
        known: Sequence[SliceScan | None] | None = None,
    ) -> None:
        count = array.shape[0]
        self.array, self.metal_threshold = array, metal_threshold
        self.known = known
        self.maxima = np.empty(count, dtype=array.dtype)
        self.minima = np.empty(count, dtype=array.dtype)
        self.at_max = np.empty(count, dtype=np.int64)
        self.at_min = np.empty(count, dtype=np.int64)
        self.metal = np.zeros(count, dtype=np.int64)
        self.measurable = _measurable(array)
        self.stride = _noise_stride(count)
        self.samples: dict[int, np.ndarray] = {}
        self.counts = np.zeros(count, dtype=np.int64)
        self.percentiles = np.full(count, np.nan)

    def _known(self, k: int) -> SliceScan | None:
        scanned = None if self.known is None else self.known[k]
        return scanned if scanned is not None and self.metal_threshold in scanned.metal else None

    def block(self, start: int, stop: int) -> None:
        """Measure slices ``start`` to ``stop`` (each touched while it is in cache)."""
        array, threshold = self.array, self.metal_threshold
        slices = _Slices(*array.shape[1:]) if self.measurable else None
        top: Any = None  # numpy scalars of the array's dtype
        bottom: Any = None
        for k in range(start, stop):
            image = array[k]
            scanned = self._known(k)
            if scanned is None:
                scanned = scan_slice(image, (threshold,), slices, top=top, bottom=bottom)
            self.maxima[k] = high = scanned.maximum
            self.minima[k] = low = scanned.minimum
            self.at_max[k], self.at_min[k] = scanned.at_maximum, scanned.at_minimum
            self.metal[k] = scanned.metal[threshold]
            self.counts[k], self.percentiles[k] = scanned.body, scanned.percentile
            top = high if top is None or high > top else top
            bottom = low if bottom is None or low < bottom else bottom
            if k % self.stride:
                continue
            if slices is None:
                self.samples[k] = np.zeros(0, dtype=np.float32)
                continue
            image32 = _slice32(image)
            at = slices.homogeneous(image32, TISSUE_HU)
            laplacian = slices.laplacian_of(image32)
            self.samples[k] = laplacian[at[:: max(1, at.size // _NOISE_SAMPLES_PER_SLICE)]]


def _scan_ct(
    array: np.ndarray,
    metal_threshold: float,
    threads: int = 0,
    known: Sequence[SliceScan | None] | None = None,
) -> _CtScan:
    """:func:`noise_sd`, :func:`metal_fraction`, :func:`streak_index` and the extremes
    :func:`clipped_fraction` counts, in one pass over the slices of a 3D ``array``
    (at least one voxel) with the same values as those functions; on ``threads``
    (default :data:`_SCAN_THREADS`), a block of slices at a time. ``known``: slices
    scanned earlier, in the array's order (None where not)."""
    count = array.shape[0]
    scan = _Scan(array, metal_threshold, known)
    starts = range(0, count, _SCAN_BLOCK)
    threads = min(threads or _SCAN_THREADS, len(starts))
    if threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="quality") as pool:
            for done in [pool.submit(scan.block, s, min(count, s + _SCAN_BLOCK)) for s in starts]:
                done.result()
    else:
        scan.block(0, count)
    maxima, minima = scan.maxima, scan.minima
    maximum, minimum = maxima.max(), minima.min()
    return _CtScan(
        noise=_pooled_noise([scan.samples[k] for k in sorted(scan.samples)]),
        metal_fraction=float(scan.metal.sum()) / max(1, array.size),
        streak_index=_streak_of(_energies(scan.percentiles, scan.counts)),
        maximum=float(maximum),
        minimum=float(minimum),
        at_maximum=int(scan.at_max[maxima == maximum].sum()),
        at_minimum=int(scan.at_min[minima == minimum].sum()),
    )


# -- checks and decision ---------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One comparison of the input with what the routine was validated on."""

    name: str
    passed: bool
    measured: str
    expected: str

    @property
    def message(self) -> str:
        return f"{self.name}: {self.measured} (validated on {self.expected})"


@dataclass(frozen=True)
class Measurements:
    """What the gate measured on a series (None: could not be measured)."""

    layout: SliceLayout
    noise: float | None = None
    metal_fraction: float | None = None
    streak_index: float | None = None
    clipped_fraction: float | None = None

    def summary(self) -> str:
        def fmt(value: float | None, spec: str) -> str:
            return "n/a" if value is None else format(value, spec)

        return (
            f"slices={self.layout.count} missing={self.layout.missing}"
            f" duplicates={self.layout.duplicates} noise={fmt(self.noise, '.1f')}"
            f" metal={fmt(self.metal_fraction, '.2e')} streaks={fmt(self.streak_index, '.2f')}"
            f" clipped={fmt(self.clipped_fraction, '.2e')}"
        )


def is_scanned_as_ct(header: Dataset) -> bool:
    """Whether :func:`measure` scans a series of such images slice by slice as CT (HU):
    Modality CT, and not projection images or photographs."""
    return str(header.get("Modality", "")) == "CT" and not image_attributes.is_image_sop_class(
        str(header.get("SOPClassUID", ""))
    )


def measure(
    array: np.ndarray | None,
    headers: Sequence[Dataset],
    validated: ValidatedInput,
    layout: SliceLayout | None = None,
    scanned: Sequence[SliceScan | None] | None = None,
) -> Measurements:
    """Measure a series: slice layout from ``headers`` (unless given), the rest from ``array``.

    ``scanned``: the slices of a CT ``array`` already scanned (:func:`scan_slice`, in the
    array's order, None where not, with ``validated.metal_threshold`` among the
    thresholds); only their noise is then measured, and the values are the same.
    """
    layout = slice_layout(headers) if layout is None else layout
    if array is None:
        return Measurements(layout)
    modality = str(headers[0].get("Modality", "")) if headers else ""
    if headers and image_attributes.is_image_sop_class(str(headers[0].get("SOPClassUID", ""))):
        # Projection images and photographs: independent frames, no HU.
        return Measurements(layout, clipped_fraction=image_clipped_fraction(array))
    if modality != "CT":
        return Measurements(layout, clipped_fraction=clipped_fraction(array, count_low_end=False))
    if array.ndim != 3 or array.size == 0:
        return Measurements(
            layout,
            noise=noise_sd(array),
            metal_fraction=metal_fraction(array, validated.metal_threshold),
            streak_index=streak_index(array),
            clipped_fraction=clipped_fraction(
                array, count_low_end=float(array.min()) > _AIR_FLOOR_HU
            ),
        )
    if scanned is not None and len(scanned) != array.shape[0]:
        raise ValueError(f"{len(scanned)} slices scanned for a volume of {array.shape[0]}")
    scan = _scan_ct(array, validated.metal_threshold, known=scanned)
    total = max(1, array.size)
    clipped = float(scan.at_maximum) / total
    if scan.minimum > _AIR_FLOOR_HU:  # the low end counts unless air's floor is there
        clipped += float(scan.at_minimum) / total
    return Measurements(
        layout,
        noise=scan.noise,
        metal_fraction=scan.metal_fraction,
        streak_index=scan.streak_index,
        clipped_fraction=clipped,
    )


def _in(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] - 1e-6 <= value <= bounds[1] + 1e-6


def _range(bounds: tuple[float, float], unit: str = "") -> str:
    return f"{bounds[0]:g}-{bounds[1]:g}{unit}"


def _at_most(name: str, value: float, limit: float, measured: str) -> Check:
    """A check that passes when a measurement is no more than its validated limit."""
    return Check(name, value <= limit, measured, f"at most {limit:g}")


def header_checks(headers: Sequence[Dataset], validated: ValidatedInput) -> list[Check]:
    """Checks that need only the first image's header."""
    checks: list[Check] = []
    if not headers:
        return checks
    first = headers[0]

    def listed(name: str, keyword: str, allowed: Sequence[str]) -> None:
        if allowed:
            value = first.get(keyword)
            values = (
                [str(v) for v in value]
                if isinstance(value, Sequence) and not isinstance(value, str)
                else [str(value or "")]
            )
            ok = any(v.upper() in {a.upper() for a in allowed} for v in values)
            checks.append(Check(name, ok, "\\".join(values) or "none", "/".join(allowed)))

    listed("modality", "Modality", validated.modalities)
    listed("sop_class", "SOPClassUID", validated.sop_classes)
    listed("kernel", "ConvolutionKernel", validated.kernels)
    listed("photometric", "PhotometricInterpretation", validated.photometric_interpretations)
    if validated.slice_thickness_mm is not None:
        thickness = first.get("SliceThickness")
        if thickness in (None, ""):
            checks.append(
                Check("slice_thickness", False, "not given", _range(validated.slice_thickness_mm))
            )
        else:
            value = float(thickness)
            checks.append(
                Check(
                    "slice_thickness",
                    _in(value, validated.slice_thickness_mm),
                    f"{value:g} mm",
                    _range(validated.slice_thickness_mm, " mm"),
                )
            )
    # PixelSpacing, else ImagerPixelSpacing (projection radiographs and mammograms often
    # give only the detector spacing): the spacing the routine itself is given.
    spacing, attribute = image_attributes.pixel_spacing(first)
    if validated.pixel_spacing_mm is not None and spacing is not None:
        checks.append(
            Check(
                "pixel_spacing",
                all(_in(v, validated.pixel_spacing_mm) for v in spacing),
                "x".join(f"{v:g}" for v in spacing)
                + " mm"
                + (f" ({attribute})" if attribute != "PixelSpacing" else ""),
                _range(validated.pixel_spacing_mm, " mm"),
            )
        )
    if validated.contrast != "any":
        agent = str(first.get("ContrastBolusAgent", "") or "").strip()
        present = bool(agent)
        checks.append(
            Check(
                "contrast",
                present == (validated.contrast == "present"),
                "contrast agent given" if present else "no contrast agent",
                "contrast" if validated.contrast == "present" else "no contrast",
            )
        )
    if validated.min_bits_stored:
        bits = int(first.get("BitsStored", 0) or 0)
        checks.append(
            Check(
                "bit_depth",
                bits >= validated.min_bits_stored,
                f"{bits} bits stored",
                f"at least {validated.min_bits_stored} bits",
            )
        )
    return checks


def measured_checks(measured: Measurements, validated: ValidatedInput) -> list[Check]:
    """Checks on what :func:`measure` found."""
    layout = measured.layout
    where = (
        f" (gap of {layout.gaps[0][1]:.2f} mm after slice {layout.gaps[0][0]})"
        if layout.gaps
        else ""
    )
    checks = [
        Check(
            "missing_slices",
            layout.missing == 0,
            f"{layout.missing} missing slice position(s){where}",
            "none missing",
        ),
        Check(
            "duplicate_slices",
            layout.duplicates <= validated.max_duplicate_slices,
            f"{layout.duplicates} duplicated slice position(s)",
            f"at most {validated.max_duplicate_slices}",
        ),
    ]
    if validated.noise is not None:
        if measured.noise is None:
            checks.append(Check("noise", False, "not measurable", _range(validated.noise)))
        else:
            checks.append(
                Check(
                    "noise",
                    _in(measured.noise, validated.noise),
                    f"{measured.noise:.1f}",
                    _range(validated.noise),
                )
            )
    if measured.metal_fraction is not None:
        checks.append(
            _at_most(
                "metal",
                measured.metal_fraction,
                validated.max_metal_fraction,
                f"{measured.metal_fraction:.2e} of voxels above {validated.metal_threshold:g}",
            )
        )
    if measured.streak_index is not None:
        checks.append(
            _at_most(
                "streaks",
                measured.streak_index,
                validated.max_streak_index,
                f"streak index {measured.streak_index:.2f}",
            )
        )
    if measured.clipped_fraction is not None:
        checks.append(
            _at_most(
                "clipping",
                measured.clipped_fraction,
                validated.max_clipped_fraction,
                f"{measured.clipped_fraction:.2e} of pixels at the stored extremes",
            )
        )
    return checks


@dataclass(frozen=True)
class Decision:
    """What the gate decided: ``run``, ``warn`` or ``skip``, and why.

    ``warnings`` are the failed checks whose action is ``warn``; ``reasons`` the
    ones that skip; ``ignored`` those configured to ``run`` anyway.
    """

    action: str
    checks: tuple[Check, ...]
    warnings: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    ignored: tuple[str, ...] = field(default=())

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)


def decide(checks: Sequence[Check], policy: QualitySettings) -> Decision:
    """The most severe action among the failed checks (``run`` when all pass)."""
    action = "run"
    warnings: list[str] = []
    reasons: list[str] = []
    ignored: list[str] = []
    for check in checks:
        if check.passed:
            continue
        wanted = policy.action(check.name)
        {"run": ignored, "warn": warnings, "skip": reasons}[wanted].append(check.message)
        if _SEVERITY[wanted] > _SEVERITY[action]:
            action = wanted
    return Decision(action, tuple(checks), tuple(warnings), tuple(reasons), tuple(ignored))


def assess(
    array: np.ndarray | None,
    headers: Sequence[Dataset],
    validated: ValidatedInput,
    policy: QualitySettings,
    layout: SliceLayout | None = None,
    measured: Measurements | None = None,
) -> tuple[Measurements, Decision]:
    """Measure a series and decide (``array`` None: the series could not be assembled).

    ``layout`` is the slice layout of the series as received, when ``headers`` are
    those of an assembled volume from which duplicates were already dropped.
    ``measured``: what :func:`measure` returned for this ``array``, ``headers`` and
    ``validated`` earlier (a series read and measured ahead); only the decision is made.
    """
    if measured is None:
        measured = measure(array, headers, validated, layout)
    checks = header_checks(headers, validated) + measured_checks(measured, validated)
    return measured, decide(checks, policy)


__all__ = [
    "Check",
    "Decision",
    "Measurements",
    "SliceLayout",
    "assess",
    "clipped_fraction",
    "decide",
    "header_checks",
    "image_clipped_fraction",
    "measure",
    "measured_checks",
    "metal_fraction",
    "noise_sd",
    "slice_energy",
    "slice_layout",
    "slice_noise",
    "streak_index",
    "without_duplicate_positions",
]
