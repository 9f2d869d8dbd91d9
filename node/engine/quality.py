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

from collections.abc import Sequence
from dataclasses import dataclass, field

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
# every measurement on it), into buffers allocated once per volume. The Laplacian is
# computed only at the homogeneous pixels (with the same float32 operations, in the
# same order, as over the whole slice), which are found by a separable 5x5 erosion.


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
    """Per-slice Laplacian values at homogeneous pixels, with buffers reused across slices.

    Equal, value for value and in the same order, to
    ``_laplacian(image)[homogeneous_mask(image, window)]``: the mask's eroded pixels are
    those at least 2 from the border whose 5x5 box lies within the window.
    """

    def __init__(self, rows: int, columns: int) -> None:
        self.rows, self.columns = rows, columns
        self.inside = np.empty((rows, columns), dtype=bool)
        self.above = np.empty((rows, columns), dtype=bool)
        self.h2 = np.empty((rows, columns - 1), dtype=bool)
        self.h4 = np.empty((rows, columns - 3), dtype=bool)
        self.h5 = np.empty((rows, columns - 4), dtype=bool)
        self.v2 = np.empty((rows - 1, columns - 4), dtype=bool)
        self.v4 = np.empty((rows - 3, columns - 4), dtype=bool)
        # The eroded mask laid out as the slice (its 2-pixel border stays False), so that
        # its flat nonzero indices are the slice's.
        self.eroded = np.zeros((rows, columns), dtype=bool)

    def homogeneous(self, image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
        """Flat indices (into ``image``) of the pixels whose 5x5 box lies within ``window``."""
        inside = np.greater_equal(image, window[0], out=self.inside)
        np.logical_and(inside, np.less_equal(image, window[1], out=self.above), out=inside)
        # Columns j..j+4 in h5[:, j], then rows i..i+4: the box centred (i+2, j+2).
        np.logical_and(inside[:, :-1], inside[:, 1:], out=self.h2)
        np.logical_and(self.h2[:, :-2], self.h2[:, 2:], out=self.h4)
        np.logical_and(self.h4[:, :-1], inside[:, 4:], out=self.h5)
        np.logical_and(self.h5[:-1], self.h5[1:], out=self.v2)
        np.logical_and(self.v2[:-2], self.v2[2:], out=self.v4)
        np.logical_and(self.v4[:-1], self.h5[4:], out=self.eroded[2:-2, 2:-2])
        return np.flatnonzero(self.eroded)

    def laplacian_at(self, image: np.ndarray, at: np.ndarray) -> np.ndarray:
        """:func:`_laplacian` of ``image`` at the flat indices ``at`` (float32, same order
        of operations)."""
        flat = image.reshape(-1)
        columns = self.columns
        values = flat[at - columns] + flat[at + columns]
        values += flat[at - 1]
        values += flat[at + 1]
        values -= 4.0 * flat[at]
        return values

    def values(self, image: np.ndarray, window: tuple[float, float], every: int = 0) -> np.ndarray:
        """The Laplacian at the homogeneous pixels of ``image`` (float32, C-contiguous);
        with ``every``, only every ``max(1, count // every)``-th of them."""
        at = self.homogeneous(image, window)
        if every:
            at = at[:: max(1, at.size // every)]
        return self.laplacian_at(image, at)


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


def _percentile(values: np.ndarray) -> float:
    """``np.percentile(np.abs(values), 95)``, with the magnitudes first permuted so that
    the two order statistics it interpolates are in place: the percentile depends on the
    values only, not their order, and numpy's own multi-point partition (four points)
    then has almost nothing to do."""
    magnitudes = np.abs(values)
    size = magnitudes.size
    if size > 2:
        at = min(size - 2, int((size - 1) * _STREAK_PERCENTILE / 100.0))
        magnitudes.partition(at)
        above = at + 1 + int(np.argmin(magnitudes[at + 1 :]))
        magnitudes[[at + 1, above]] = magnitudes[[above, at + 1]]
    return float(np.percentile(magnitudes, _STREAK_PERCENTILE, overwrite_input=True))


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
    at_minimum: int


def _scan_ct(array: np.ndarray, metal_threshold: float) -> _CtScan:
    """:func:`noise_sd`, :func:`metal_fraction`, :func:`streak_index` and the extremes
    :func:`clipped_fraction` counts, in one pass over the slices of a 3D ``array``
    (at least one voxel) with the same values as those functions."""
    count = array.shape[0]
    maxima = np.empty(count, dtype=array.dtype)
    minima = np.empty(count, dtype=array.dtype)
    at_max = np.empty(count, dtype=np.int64)
    at_min = np.empty(count, dtype=np.int64)
    metal = 0
    measurable = _measurable(array)
    slices = _Slices(*array.shape[1:]) if measurable else None
    stride = _noise_stride(count)
    samples: list[np.ndarray] = []
    counts = np.zeros(count, dtype=np.int64)
    percentiles = np.full(count, np.nan)
    top = bottom = None
    for k, image in enumerate(array):
        maxima[k] = high = image.max()
        minima[k] = low = image.min()
        # Counted only where the slice may hold the series' extreme (a NaN compares
        # False, so it is counted, and makes every count moot: nothing equals NaN).
        at_max[k] = 0 if top is not None and high < top else np.count_nonzero(image == high)
        at_min[k] = 0 if bottom is not None and low > bottom else np.count_nonzero(image == low)
        top = high if top is None or high > top else top
        bottom = low if bottom is None or low < bottom else bottom
        if not high <= metal_threshold:
            metal += int(np.count_nonzero(image > metal_threshold))
        if slices is None:
            if k % stride == 0:
                samples.append(np.zeros(0, dtype=np.float32))
            continue
        image32 = _slice32(image)
        if k % stride == 0:
            samples.append(slices.values(image32, TISSUE_HU, _NOISE_SAMPLES_PER_SLICE))
        values = slices.values(image32, BODY_HU)
        counts[k] = values.size
        if values.size >= _MIN_PIXELS:  # the least that can count (see _energies)
            percentiles[k] = _percentile(values)
    maximum, minimum = maxima.max(), minima.min()
    return _CtScan(
        noise=_pooled_noise(samples),
        metal_fraction=float(metal) / max(1, array.size),
        streak_index=_streak_of(_energies(percentiles, counts)),
        maximum=float(maximum),
        minimum=float(minimum),
        at_maximum=int(at_max[maxima == maximum].sum()),
        at_minimum=int(at_min[minima == minimum].sum()),
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


def measure(
    array: np.ndarray | None,
    headers: Sequence[Dataset],
    validated: ValidatedInput,
    layout: SliceLayout | None = None,
) -> Measurements:
    """Measure a series: slice layout from ``headers`` (unless given), the rest from ``array``."""
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
            clipped_fraction=clipped_fraction(array, count_low_end=float(array.min()) > -1000.0),
        )
    scan = _scan_ct(array, validated.metal_threshold)
    total = max(1, array.size)
    clipped = float(scan.at_maximum) / total
    if scan.minimum > -1000.0:  # the low end counts unless air's floor is there
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
