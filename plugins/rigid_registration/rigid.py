"""Rigid (6 degrees of freedom) registration of two CT volumes with SimpleITK.

Array logic only: volumes in, a 4x4 matrix and quality figures out. The method is
the standard ITK recipe for multi-modal-tolerant rigid alignment:

* initial translation from the centres of mass of the two bodies (voxels above
  ``BODY_HU``), so Frames of Reference with unrelated origins start close;
* Mattes mutual information, random sampling with a fixed seed (repeatable);
* regular-step gradient descent over a versor-rigid transform, parameters scaled
  by their physical shift;
* three resolution levels (shrink 4, 2, 1 with Gaussian smoothing 2, 1, 0 mm).

ITK's transform maps points of the fixed image to the moving one; what DICOM
Spatial Registration needs is the inverse: moving (prior) patient coordinates to
fixed (current) ones. Both images are in DICOM patient coordinates (LPS), as ITK's
physical space is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from node.contract.volume import Volume

log = logging.getLogger(__name__)

#: Voxels above this (HU) are the body (and table) for the centre-of-mass start.
BODY_HU = -400.0
#: Histogram bins of Mattes mutual information.
HISTOGRAM_BINS = 50
#: Share of fixed-image voxels sampled for the metric at each level.
SAMPLING_PERCENTAGES = (0.1, 0.03, 0.01)
#: Craniocaudal search before the optimiser (mm): scans of the same patient often
#: start at different table positions, and ribs and vertebrae repeat along z every
#: few centimetres, so a gradient descent from the body's centre can lock onto the
#: wrong rib. The search tries every offset of this range at the coarsest level.
Z_SEARCH_MM = 90.0
Z_SEARCH_STEP_MM = 6.0
#: Shrink factor of the craniocaudal search.
SEARCH_SHRINK = 4
#: Seed of the metric's random sampling (the result is repeatable).
SAMPLING_SEED = 20261126
SHRINK_FACTORS = (4, 2, 1)
#: Gaussian smoothing (mm) at each level.
SMOOTHING_SIGMAS_MM = (2.0, 1.0, 0.0)
MAX_ITERATIONS = 200


class RegistrationFailed(RuntimeError):
    """The volumes could not be aligned (no body found, or the optimiser diverged)."""


@dataclass(frozen=True)
class RigidResult:
    """Outcome of :func:`register_rigid`.

    Attributes
    ----------
    matrix
        4x4 matrix mapping moving (prior) patient coordinates to fixed (current) ones.
    mutual_information
        Final Mattes mutual information (ITK's sign: more negative is better).
    correlation
        Pearson correlation of the HU of both images over the fixed body after
        resampling the moving image with ``matrix`` (1 is a perfect match).
    overlap
        Share of the fixed body that the resampled moving image covers.
    iterations
        Optimiser iterations at the last level.
    stop_condition
        The optimiser's stop reason.
    seconds
        Wall time of the registration.
    """

    matrix: np.ndarray
    mutual_information: float
    correlation: float
    overlap: float
    iterations: int
    stop_condition: str
    seconds: float


def to_sitk(volume: Volume) -> sitk.Image:
    """The volume as a SimpleITK image in patient coordinates (LPS, mm)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    axes = volume.affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in volume.affine[:3, 3]])
    image.SetDirection([float(v) for v in (axes / spacing).ravel()])
    return image


def _body_centre(image: sitk.Image, name: str) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(image)
    indices = np.argwhere(array > BODY_HU)
    if len(indices) == 0:
        raise RegistrationFailed(f"no voxel above {BODY_HU:g} HU in the {name} series")
    centre = indices.mean(axis=0)[::-1]  # (column, row, slice)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre]))


def _to_matrix(transform: sitk.VersorRigid3DTransform) -> np.ndarray:
    """4x4 matrix of a rigid ITK transform (fixed -> moving points)."""
    matrix = np.eye(4)
    linear = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre = np.asarray(transform.GetCenter())
    matrix[:3, :3] = linear
    matrix[:3, 3] = np.asarray(transform.GetTranslation()) + centre - linear @ centre
    return matrix


def _agreement(fixed: sitk.Image, moving: sitk.Image, matrix: np.ndarray) -> tuple[float, float]:
    """Correlation over the fixed body, and the share of it the moved image covers."""
    inverse = np.linalg.inv(matrix)  # fixed -> moving points, as ITK resamples
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in inverse[:3, :3].ravel()])
    transform.SetTranslation([float(v) for v in inverse[:3, 3]])
    outside = -10_000.0
    moved = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, outside, sitk.sitkFloat32)
    a = sitk.GetArrayViewFromImage(fixed)
    b = sitk.GetArrayViewFromImage(moved)
    body = a > BODY_HU
    covered = body & (b > outside / 2)
    if covered.sum() < 100:
        return 0.0, float(covered.sum() / max(body.sum(), 1))
    correlation = float(np.corrcoef(a[covered], b[covered])[0, 1])
    return correlation, float(covered.sum() / body.sum())


def _metric(method_threads: int | None) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    if method_threads is not None:
        method.SetNumberOfThreads(method_threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # Image gradients by central differences at the sampled points only, instead of
    # gradient images of the whole volumes at every level (much faster at full size).
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _search_z(
    fixed: sitk.Image, moving: sitk.Image, initial: sitk.VersorRigid3DTransform, threads: int | None
) -> sitk.VersorRigid3DTransform:
    """The initial transform moved along z to the best mutual information on a coarse grid."""
    shrink = [SEARCH_SHRINK] * 3
    sigma = [SEARCH_SHRINK * s / 2.0 for s in fixed.GetSpacing()]
    coarse_fixed = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, sigma), shrink)
    coarse_moving = sitk.Shrink(
        sitk.SmoothingRecursiveGaussian(
            moving, [SEARCH_SHRINK * s / 2.0 for s in moving.GetSpacing()]
        ),
        shrink,
    )
    method = _metric(threads)
    method.SetMetricSamplingPercentage(SAMPLING_PERCENTAGES[0], SAMPLING_SEED)
    best: tuple[float, float] | None = None
    start = np.asarray(initial.GetTranslation())
    steps = round(Z_SEARCH_MM / Z_SEARCH_STEP_MM)
    for k in range(-steps, steps + 1):
        candidate = sitk.VersorRigid3DTransform(initial)
        candidate.SetTranslation(
            [float(start[0]), float(start[1]), float(start[2] + k * Z_SEARCH_STEP_MM)]
        )
        method.SetInitialTransform(candidate)
        try:
            value = method.MetricEvaluate(coarse_fixed, coarse_moving)
        except RuntimeError:  # ITK: too few samples overlap the prior at this offset
            continue
        if best is None or value < best[0]:
            best = (value, k * Z_SEARCH_STEP_MM)
    if best is None:
        raise RegistrationFailed("the series do not overlap at any craniocaudal offset")
    found = sitk.VersorRigid3DTransform(initial)
    found.SetTranslation([float(start[0]), float(start[1]), float(start[2] + best[1])])
    log.debug("z search offset_mm=%.1f mi=%.4f", best[1], best[0])
    return found


def register_rigid(
    fixed: Volume,
    moving: Volume,
    *,
    threads: int | None = None,
    raise_if_expired: Callable[[], None] = lambda: None,
) -> RigidResult:
    """Rigidly align ``moving`` (the prior) to ``fixed`` (the current series).

    Parameters
    ----------
    fixed, moving
        CT volumes in HU, each in its own Frame of Reference.
    threads
        ITK threads (default: ITK's own choice).
    raise_if_expired
        Called at every optimiser iteration (a job's deadline check); what it raises
        stops the registration and is raised again.

    Raises
    ------
    RegistrationFailed
        No body in a volume, or the optimiser stopped on a numerical problem.
    """
    started = time.perf_counter()
    fixed_image, moving_image = to_sitk(fixed), to_sitk(moving)
    initial = sitk.VersorRigid3DTransform()
    fixed_centre = _body_centre(fixed_image, "current")
    initial.SetCenter([float(v) for v in fixed_centre])
    initial.SetTranslation([float(v) for v in _body_centre(moving_image, "prior") - fixed_centre])

    initial = _search_z(fixed_image, moving_image, initial, threads)
    raise_if_expired()
    method = _metric(threads)
    method.SetMetricSamplingPercentagePerLevel(list(SAMPLING_PERCENTAGES), SAMPLING_SEED)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=MAX_ITERATIONS,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    # An exception inside an ITK callback reaches Python as a bare RuntimeError: keep
    # the job's own (its timeout) and stop the optimiser instead.
    stopped: list[Exception] = []

    def check_deadline() -> None:
        if stopped:  # each resolution level starts again after a stop
            method.StopRegistration()
            return
        try:
            raise_if_expired()
        except Exception as exc:
            stopped.append(exc)
            method.StopRegistration()

    method.AddCommand(sitk.sitkIterationEvent, check_deadline)
    try:
        found = method.Execute(fixed_image, moving_image)
    except RuntimeError as exc:
        if stopped:
            raise stopped[0] from exc
        raise RegistrationFailed(f"the optimiser failed: {exc}") from exc
    if stopped:
        raise stopped[0]
    raise_if_expired()
    if isinstance(found, sitk.CompositeTransform):
        found = found.GetNthTransform(0)
    fixed_to_moving = _to_matrix(sitk.VersorRigid3DTransform(found))
    matrix = np.linalg.inv(fixed_to_moving)
    matrix[3] = (0.0, 0.0, 0.0, 1.0)
    correlation, overlap = _agreement(fixed_image, moving_image, matrix)
    result = RigidResult(
        matrix=matrix,
        mutual_information=float(method.GetMetricValue()),
        correlation=correlation,
        overlap=overlap,
        iterations=int(method.GetOptimizerIteration()),
        stop_condition=method.GetOptimizerStopConditionDescription(),
        seconds=time.perf_counter() - started,
    )
    log.info(
        "rigid registration done seconds=%.2f mi=%.4f correlation=%.3f overlap=%.3f iterations=%d",
        result.seconds,
        result.mutual_information,
        result.correlation,
        result.overlap,
        result.iterations,
    )
    return result
