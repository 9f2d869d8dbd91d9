"""The input-quality gate's one-pass measurements against the per-slice implementation
they replaced (kept below as the reference): the same values, bit for bit, and so the
same decisions, on the degraded phantoms of the gate's own tests and on generated
volumes (blank and saturated slices, NaN and infinite values, integer and float dtypes,
volumes too small to measure, enough slices and pixels to subsample the noise)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from scipy import ndimage

from node.config import QualitySettings
from node.contract.assemble import assemble_volume
from node.engine import quality
from node.engine.quality import Measurements
from plugins.ct_lungs import CtLungsPlugin
from tests.test_quality_gate import VALIDATED
from tools.synthetic import degraded
from tools.synthetic.chest_ct import make_chest_ct

# -- the reference: the gate's measurements before they were vectorised ------------------

_TISSUE, _BODY = quality.TISSUE_HU, quality.BODY_HU


def _ref_laplacian(image: np.ndarray) -> np.ndarray:
    centre = image[1:-1, 1:-1]
    with np.errstate(invalid="ignore"):  # inf - inf where a slice holds infinities
        return (
            image[:-2, 1:-1] + image[2:, 1:-1] + image[1:-1, :-2] + image[1:-1, 2:]
        ) - 4.0 * centre


def _ref_mask(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    inside = ((image >= window[0]) & (image <= window[1])).view(np.uint8)
    eroded = ndimage.minimum_filter(inside, size=5, mode="constant", cval=0)
    return eroded[1:-1, 1:-1].astype(bool)


def _ref_slice_values(array: np.ndarray, window: tuple[float, float]) -> list[np.ndarray]:
    if array.ndim != 3 or min(array.shape[1:]) < 7:
        return [np.zeros(0, dtype=np.float32) for _ in range(array.shape[0])]
    values = []
    for image in array:
        image = image.astype(np.float32, copy=False)
        values.append(_ref_laplacian(image)[_ref_mask(image, window)])
    return values


def _ref_robust_sd(values: np.ndarray) -> float:
    median = float(np.median(values))
    return float(np.median(np.abs(values - median))) * (1.0 / 0.6744897501960817) / np.sqrt(20.0)


def _ref_noise_sd(array: np.ndarray, window: tuple[float, float] = _TISSUE) -> float | None:
    if array.ndim != 3:
        return None
    stride = max(1, -(-array.shape[0] // 64))
    samples = []
    for values in _ref_slice_values(array[::stride], window):
        step = max(1, values.size // 20_000)
        samples.append(values[::step])
    pooled = np.concatenate(samples) if samples else np.zeros(0)
    return _ref_robust_sd(pooled) if pooled.size >= 200 else None


def _ref_slice_noise(array: np.ndarray) -> np.ndarray:
    return np.asarray(
        [_ref_robust_sd(v) if v.size >= 200 else np.nan for v in _ref_slice_values(array, _TISSUE)]
    )


def _ref_slice_energy(array: np.ndarray) -> np.ndarray:
    per_slice = _ref_slice_values(array, _BODY)
    counts = np.asarray([v.size for v in per_slice])
    if counts.size == 0:
        return np.zeros(0)
    enough = max(200, 0.5 * float(np.median(counts)))
    return np.asarray(
        [float(np.percentile(np.abs(v), 95.0)) if v.size >= enough else np.nan for v in per_slice]
    )


def _ref_streak_index(array: np.ndarray) -> float:
    values = _ref_slice_energy(array)
    values = values[np.isfinite(values)]
    if values.size < 3:
        return 1.0
    median = float(np.median(values))
    return float(values.max() / median) if median > 0 else 1.0


def _ref_clipped(array: np.ndarray, *, count_low_end: bool) -> float:
    total = max(1, array.size)
    fraction = float(np.count_nonzero(array == array.max())) / total
    if count_low_end:
        fraction += float(np.count_nonzero(array == array.min())) / total
    return fraction


def _ref_measure(array: np.ndarray, threshold: float) -> tuple[object, ...]:
    """The CT measurements of the old ``measure`` (noise, metal, streaks, clipping)."""
    return (
        _ref_noise_sd(array),
        float(np.count_nonzero(array > threshold)) / max(1, array.size),
        _ref_streak_index(array),
        _ref_clipped(array, count_low_end=float(array.min()) > -1000.0),
    )


# -- comparison ---------------------------------------------------------------------------


def _ct_header() -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    return ds


def _measured(array: np.ndarray, threshold: float = 2500.0) -> tuple[object, ...]:
    validated = quality.ValidatedInput(modalities=("CT",), metal_threshold=threshold)
    found: Measurements = quality.measure(array, [_ct_header()], validated)
    return (found.noise, found.metal_fraction, found.streak_index, found.clipped_fraction)


def _same(new: object, old: object) -> bool:
    """Equal bit for bit (NaN equal to NaN), arrays by dtype and values."""
    if isinstance(old, np.ndarray):
        assert isinstance(new, np.ndarray)
        return new.dtype == old.dtype and np.array_equal(new, old, equal_nan=True)
    if isinstance(old, float) and isinstance(new, float):
        return new == old or (np.isnan(new) and np.isnan(old))
    return new == old


def assert_same_as_reference(array: np.ndarray) -> None:
    for threshold in (2500.0, 100.0):
        new, old = _measured(array, threshold), _ref_measure(array, threshold)
        assert all(_same(a, b) for a, b in zip(new, old, strict=True)), (new, old)
    for new_values, old_values in zip(
        quality._slice_values(array, _BODY), _ref_slice_values(array, _BODY), strict=True
    ):
        assert _same(new_values, old_values)
    checks: list[tuple[Callable[[np.ndarray], object], Callable[[np.ndarray], object]]] = [
        (quality.noise_sd, _ref_noise_sd),
        (quality.slice_noise, _ref_slice_noise),
        (quality.slice_energy, _ref_slice_energy),
        (quality.streak_index, _ref_streak_index),
    ]
    for new_function, old_function in checks:
        assert _same(new_function(array), old_function(array)), new_function.__name__


# -- the volumes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest() -> list[Dataset]:
    datasets, _ = make_chest_ct(n_slices=30, rows=96, columns=96, seed=2, noise_sd_hu=15.0)
    return degraded.with_header(datasets, ConvolutionKernel="STANDARD")


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d,
        lambda d: degraded.add_noise(d, 50.0, seed=1),
        lambda d: degraded.insert_metal(d, [12, 13, 14]),
        lambda d: degraded.add_motion(d, [12, 13, 14]),
        degraded.to_8_bit,
        lambda d: degraded.clip_hu(d, -1024.0, 150.0),
    ],
    ids=["clean", "noise", "metal", "motion", "8-bit", "clipped"],
)
def test_the_gate_decides_the_phantoms_as_before(chest: list[Dataset], change: object) -> None:
    volume = assemble_volume(change(chest))  # type: ignore[operator]
    assert_same_as_reference(volume.array)
    # and the whole assessment: the same measurements, checks and decision
    for validated in (CtLungsPlugin.validated_on, VALIDATED):
        assert validated is not None
        measured, decision = quality.assess(
            volume.array, volume.datasets, validated, QualitySettings()
        )
        reference = Measurements(
            quality.slice_layout(volume.datasets),
            *_ref_measure(volume.array, validated.metal_threshold),  # type: ignore[arg-type]
        )
        checks = quality.header_checks(volume.datasets, validated)
        expected = quality.decide(
            checks + quality.measured_checks(reference, validated), QualitySettings()
        )
        assert measured == reference
        assert decision == expected


def _volume(
    seed: int,
    shape: tuple[int, int, int],
    level: float,
    sd: float,
    dtype: str,
    specials: tuple[float, ...],
    blank: bool,
    saturate: bool,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.normal(level, sd, shape)
    # a body: a disc of soft tissue in air, so that windows and their edges both occur
    rows, columns = np.ogrid[: shape[1], : shape[2]]
    body = (rows - shape[1] / 2) ** 2 + (columns - shape[2] / 2) ** 2 < (min(shape[1:]) / 3) ** 2
    array = np.where(body, array, -1024.0 + rng.normal(0, 2, shape))
    flat = array.reshape(-1)
    for value in specials:
        flat[rng.integers(0, flat.size, max(1, flat.size // 200))] = value
    if blank:
        array[rng.integers(0, shape[0])] = -1024.0
    if saturate:
        array = np.minimum(array, np.float64(level + sd))
    if dtype != "float64":
        if np.dtype(dtype).kind == "i":
            array = np.nan_to_num(np.rint(array), posinf=3071, neginf=-1024).clip(-32768, 32767)
        array = array.astype(dtype)
    return array


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(st.integers(1, 9), st.integers(3, 48), st.integers(3, 48)),
    level=st.sampled_from([0.0, 40.0, -140.0, 140.0, -400.0, 450.0, 3000.0]),
    sd=st.sampled_from([0.0, 1.0, 15.0, 60.0, 400.0]),
    dtype=st.sampled_from(["float32", "float64", "int16"]),
    specials=st.lists(
        st.sampled_from([np.nan, np.inf, -np.inf, 3071.0, -1024.0, 2500.0, -150.0, 450.0]),
        max_size=3,
    ).map(tuple),
    blank=st.booleans(),
    saturate=st.booleans(),
)
def test_generated_volumes_measure_as_before(
    seed: int,
    shape: tuple[int, int, int],
    level: float,
    sd: float,
    dtype: str,
    specials: tuple[float, ...],
    blank: bool,
    saturate: bool,
) -> None:
    assert_same_as_reference(_volume(seed, shape, level, sd, dtype, specials, blank, saturate))


def test_subsampled_noise_and_many_slices_measure_as_before() -> None:
    """More than 20,000 homogeneous pixels in a slice (the noise takes every n-th) and
    more than 64 slices (the noise takes every n-th slice)."""
    rng = np.random.default_rng(7)
    wide = rng.normal(20.0, 15.0, (3, 230, 230)).astype(np.float32)
    assert quality._slice_values(wide, _TISSUE)[0].size > 2 * 20_000
    assert_same_as_reference(wide)
    assert_same_as_reference(_volume(3, (70, 40, 40), 30.0, 10.0, "float32", (), True, False))
    for shape in [(0, 8, 8), (2, 6, 40), (1, 7, 7)]:
        small = rng.normal(0.0, 5.0, shape).astype(np.float32)
        if small.size:
            assert_same_as_reference(small)
        else:
            with pytest.raises(ValueError):
                _measured(small)
            with pytest.raises(ValueError):
                _ref_measure(small, 2500.0)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(-1e4, 1e4, width=32) | st.sampled_from([0.0, 1.0, -1.0]),
        min_size=1,
        max_size=400,
    )
)
def test_the_percentile_and_median_of_permuted_values_are_numpys(values: list[float]) -> None:
    """The streak percentile and the noise medians permute the values before numpy's
    ``percentile``/``median``: the same value for any values (ties, one or two values,
    odd and even counts, signs)."""
    array = np.asarray(values, dtype=np.float32)
    expected = float(np.percentile(np.abs(array), 95.0))
    assert quality._percentile(array) == expected
    copy = array.copy()
    median = quality._median(array)
    assert median == float(np.median(array)) or (np.isnan(median) and np.isnan(np.median(array)))
    assert np.array_equal(array, copy)  # the argument is left as it was
