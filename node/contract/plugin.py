"""The contract between the node and an inference routine.

A plugin never touches the network or the database: it receives a
:class:`~node.contract.volume.Volume` and returns a :class:`Prediction`.
It declares what it accepts (:class:`Accepts`, checked by the node before
:meth:`InferencePlugin.check`), the template it fills and the resources it
needs (:class:`Resources`). Models are loaded once per worker by
:meth:`InferencePlugin.load`.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from node.contract.geometry import acquisition_plane, reorientation
from node.contract.image_attributes import sop_class_name, sop_class_uid
from node.contract.images import image_problems
from node.contract.volume import Volume
from node.errors import InputRejected, JobTimeout

if TYPE_CHECKING:  # the contract imports without torch; routines bring it
    import torch


@dataclass(frozen=True)
class Accepts:
    """What a routine accepts, declared once and checked by the node before ``check()``.

    Attributes
    ----------
    modalities
        Accepted Modality values (empty: any).
    body_parts
        Accepted BodyPartExamined values, case-insensitive (empty: any). A series
        without BodyPartExamined passes: many scanners leave it empty.
    min_slices, max_slices
        Slice count range (``max_slices`` None: no upper bound).
    slice_spacing_mm, pixel_spacing_mm
        Inclusive ranges for the slice spacing and both pixel spacings.
    min_matrix
        Smallest rows and columns.
    planes
        Accepted acquisition planes (``axial``, ``coronal``, ``sagittal``; empty: any).
    max_obliquity_deg
        Largest angle between an image axis and the patient axis it runs along.
    sop_classes
        Accepted SOP classes, by keyword (``DigitalMammographyXRayImageStorageForPresentation``)
        or UID (empty: any).
    photometric_interpretations
        Accepted PhotometricInterpretation of the source images (``MONOCHROME1``,
        ``MONOCHROME2``, ``RGB``, ``YBR_FULL_422``...; empty: any). MONOCHROME1 is
        inverted and YBR converted to RGB before ``run`` whatever is declared here.
    samples_per_pixel
        Accepted samples per pixel of the volume (1 grayscale, 3 colour; empty: any).
    lateralities
        Accepted laterality of every image or frame (``L``, ``R``, ``B``, ``U``; empty: any).
    views
        Accepted view of every image (ViewPosition such as ``CC``, ``MLO``, ``PA``; empty: any).
    bits_stored
        Accepted BitsStored values (empty: any).

    For 2D images (``volume.is_2d``: projections, photographs, multi-frame images)
    ``slice_spacing_mm``, ``planes`` and ``max_obliquity_deg`` do not apply; the
    slice counts and ``min_matrix`` count frames and their size, and a declared
    ``pixel_spacing_mm`` range needs PixelSpacing or ImagerPixelSpacing.
    """

    modalities: tuple[str, ...] = ("CT",)
    body_parts: tuple[str, ...] = ()
    min_slices: int = 1
    max_slices: int | None = None
    slice_spacing_mm: tuple[float, float] = (0.0, math.inf)
    pixel_spacing_mm: tuple[float, float] = (0.0, math.inf)
    min_matrix: int = 1
    planes: tuple[str, ...] = ("axial",)
    max_obliquity_deg: float = 90.0
    sop_classes: tuple[str, ...] = ()
    photometric_interpretations: tuple[str, ...] = ()
    samples_per_pixel: tuple[int, ...] = ()
    lateralities: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    bits_stored: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in self.sop_classes:
            sop_class_uid(name)  # ValueError naming a misspelt SOP class

    def problems(self, volume: Volume) -> list[str]:
        """Every reason the volume is not accepted (empty when it is)."""
        found: list[str] = []
        if self.modalities and volume.modality not in self.modalities:
            found.append(
                f"modality {volume.modality or 'unknown'} is not {'/'.join(self.modalities)}"
            )
        body_part = str(volume.datasets[0].get("BodyPartExamined", "") or "").upper()
        wanted = {b.upper() for b in self.body_parts}
        if wanted and body_part and body_part not in wanted:
            found.append(f"body part {body_part} is not {'/'.join(sorted(wanted))}")
        slices, rows, columns = volume.shape
        if slices < self.min_slices:
            found.append(f"{slices} slices; at least {self.min_slices} are needed")
        if self.max_slices is not None and slices > self.max_slices:
            found.append(f"{slices} slices; at most {self.max_slices} are supported")
        if min(rows, columns) < self.min_matrix:
            found.append(
                f"image matrix {rows}x{columns} is smaller than {self.min_matrix}x{self.min_matrix}"
            )
        found += image_problems(self, volume)
        if volume.is_2d:
            # Projection images and photographs: no slice spacing, plane or obliquity.
            return found
        low, high = self.slice_spacing_mm
        if not low <= volume.spacing[0] <= high:
            found.append(f"slice spacing {volume.spacing[0]:.2f} mm is outside {low:g}-{high:g} mm")
        low, high = self.pixel_spacing_mm
        for spacing in volume.spacing[1:]:
            if not low <= spacing <= high:
                found.append(f"pixel spacing {spacing:.2f} mm is outside {low:g}-{high:g} mm")
                break
        plane = acquisition_plane(volume.affine)
        if self.planes and plane not in self.planes:
            found.append(f"not an {'/'.join(self.planes)} series: slices are {plane}")
        try:
            obliquity = reorientation(volume.affine).obliquity_deg
        except ValueError as exc:
            found.append(f"unsupported image orientation: {exc}")
        else:
            if obliquity > self.max_obliquity_deg:
                found.append(
                    f"image axes are {obliquity:.1f} degrees oblique; at most "
                    f"{self.max_obliquity_deg:g} are supported"
                )
        return found

    def check(self, volume: Volume) -> None:
        """Raise :class:`~node.errors.InputRejected` naming every problem."""
        found = self.problems(volume)
        if found:
            raise InputRejected("; ".join(found))


@dataclass(frozen=True)
class ValidatedInput:
    """The input a routine was validated on; the node's input-quality gate
    (:mod:`node.engine.quality`) measures each series against it before inference.

    Empty tuples and ``None`` ranges are not checked. What the node does when a check
    fails (run, warn, skip) is configured per rule (``rules[].quality``).

    Attributes
    ----------
    modalities, sop_classes, photometric_interpretations
        Accepted header values.
    slice_thickness_mm, pixel_spacing_mm
        Inclusive ranges of SliceThickness and both PixelSpacing values (ImagerPixelSpacing
        where PixelSpacing is absent, as for projection radiographs and mammograms).
    kernels
        ConvolutionKernel values (case-insensitive).
    contrast
        ``present``: ContrastBolusAgent must be set; ``absent``: it must not; ``any``.
    min_bits_stored
        Smallest BitsStored (e.g. 12 for CT).
    noise
        Range of the measured noise (standard deviation in homogeneous tissue, HU for CT).
    max_duplicate_slices
        Repeated slice positions tolerated (a missing slice always fails its check:
        the node runs routines on regular grids only).
    max_metal_fraction, metal_threshold
        Largest fraction of voxels above ``metal_threshold`` (HU).
    max_streak_index
        Largest ratio of a slice's high-frequency energy to the series median.
    max_clipped_fraction
        Largest fraction of pixels at the stored minimum or maximum (for 2D images: at
        the maximum, in the worst frame).
    """

    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    slice_thickness_mm: tuple[float, float] | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    kernels: tuple[str, ...] = ()
    contrast: str = "any"
    photometric_interpretations: tuple[str, ...] = ()
    min_bits_stored: int = 0
    noise: tuple[float, float] | None = None
    max_duplicate_slices: int = 0
    max_metal_fraction: float = 1e-4
    metal_threshold: float = 2500.0
    max_streak_index: float = 3.0
    max_clipped_fraction: float = 0.002

    def __post_init__(self) -> None:
        if self.contrast not in ("any", "present", "absent"):
            raise ValueError(f"contrast must be any, present or absent, not {self.contrast!r}")

    def describe(self) -> str:
        """One line of what is checked (for the console), e.g. ``CT; pixels 1-4 mm; ...``."""

        def bounds(values: tuple[float, float]) -> str:
            return f"{values[0]:g}-{values[1]:g}"

        parts = [
            "/".join(self.modalities),
            "/".join(sop_class_name(uid) for uid in self.sop_classes),
            f"slices {bounds(self.slice_thickness_mm)} mm" if self.slice_thickness_mm else "",
            f"pixels {bounds(self.pixel_spacing_mm)} mm" if self.pixel_spacing_mm else "",
            "kernel " + "/".join(self.kernels) if self.kernels else "",
            {"present": "contrast", "absent": "no contrast"}.get(self.contrast, ""),
            "/".join(self.photometric_interpretations),
            f"at least {self.min_bits_stored} bits" if self.min_bits_stored else "",
            f"noise {bounds(self.noise)}" if self.noise else "",
            f"clipped at most {self.max_clipped_fraction:g}",
        ]
        return "; ".join(part for part in parts if part)


@dataclass(frozen=True)
class Resources:
    """What a routine needs from its worker.

    Attributes
    ----------
    needs_gpu
        Refuse to run on a CPU worker (jobs fail with that reason).
    gpu_memory_mb
        Approximate device memory while loaded and running; the worker's model
        cache evicts least recently used plugins to stay within its budget.
    """

    needs_gpu: bool = False
    gpu_memory_mb: int = 0


@dataclass(frozen=True)
class RunContext:
    """What a plugin may know about the job it runs for (no PHI).

    ``deadline`` is a :func:`time.monotonic` value; long-running plugins call
    :meth:`raise_if_expired` between steps so a job timeout stops them early.
    """

    job_id: int
    rule: str
    device: torch.device
    deadline: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    #: The prior series of the same patient, for plugins that declare ``needs_prior``
    #: (found by :func:`node.orchestration.priors.find_prior`); None for every other plugin.
    prior: Volume | None = field(default=None, repr=False, compare=False)

    def raise_if_expired(self) -> None:
        if self.deadline is not None and self.clock() > self.deadline:
            raise JobTimeout(f"job {self.job_id} ran past its time limit")


@dataclass(frozen=True)
class Classification:
    """A finding for a whole series or one image, with the model's probability.

    Attributes
    ----------
    finding
        Key of a classification the template declares (its coded concept, the
        values for present and absent, and the operating threshold).
    probability
        Probability that the finding is present, 0 to 1.
    frame
        Index into ``volume.datasets`` of the image it applies to; None: the series.
    """

    finding: str
    probability: float
    frame: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0 or math.isnan(self.probability):
            raise ValueError(f"probability of {self.finding!r} is {self.probability}, not 0-1")


@dataclass(frozen=True)
class Detection:
    """A localised finding on one image: a box or a point, with a score.

    Coordinates are continuous image coordinates as in DICOM SCOORD: ``x`` runs
    along the columns, ``y`` along the rows, the top-left corner of the image is
    ``(0, 0)`` and pixel ``(row r, column c)`` covers ``[c, c + 1] x [r, r + 1]``.

    Attributes
    ----------
    finding
        Key of a detection the template declares.
    score
        Confidence, 0 to 1.
    frame
        Index into ``volume.datasets`` (the slice or image that shows it).
    box
        ``(x_min, y_min, x_max, y_max)``; None for a point.
    point
        ``(x, y)``; None for a box.
    """

    finding: str
    score: float
    frame: int
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if (self.box is None) == (self.point is None):
            raise ValueError(f"detection {self.finding!r} needs exactly one of box or point")
        if self.box is not None and not (self.box[0] < self.box[2] and self.box[1] < self.box[3]):
            raise ValueError(f"detection {self.finding!r} has an empty box {self.box}")
        if not 0.0 <= self.score <= 1.0 or math.isnan(self.score):
            raise ValueError(f"score of {self.finding!r} is {self.score}, not 0-1")


@dataclass(frozen=True)
class Registration:
    """A rigid registration of a prior series to the series the job runs on.

    Attributes
    ----------
    matrix
        4x4 homogeneous matrix (``float64``) mapping patient coordinates (LPS, mm) of the
        prior's Frame of Reference to those of the current series' Frame of Reference:
        ``current = matrix @ [x, y, z, 1]``. Its upper-left 3x3 block is a proper
        rotation (DICOM RIGID).
    source_frame_of_reference_uid
        Frame of Reference UID of the prior (the registered, moving series).
    target_frame_of_reference_uid
        Frame of Reference UID of the current series (the fixed one).
    source_study_instance_uid, source_series_instance_uid
        The prior's study and series.
    source_instances
        ``(SOP Class UID, SOP Instance UID)`` of each prior image that was registered.
    metric, metric_value
        Name and value of the quality measure the routine reports (e.g. the normalised
        cross-correlation of the overlapping body after registration, 1 is perfect).
    """

    matrix: np.ndarray
    source_frame_of_reference_uid: str
    target_frame_of_reference_uid: str
    source_study_instance_uid: str
    source_series_instance_uid: str
    source_instances: tuple[tuple[str, str], ...]
    metric: str
    metric_value: float

    def __post_init__(self) -> None:
        matrix = np.asarray(self.matrix, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"registration matrix must be a finite 4x4 array, got {matrix.shape}")
        if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
            raise ValueError(f"registration matrix last row is {matrix[3]}, not [0 0 0 1]")
        rotation = matrix[:3, :3]
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or (
            np.linalg.det(rotation) <= 0
        ):
            raise ValueError("registration matrix is not rigid: its 3x3 block is not a rotation")
        for name in (
            "source_frame_of_reference_uid",
            "target_frame_of_reference_uid",
            "source_study_instance_uid",
            "source_series_instance_uid",
        ):
            if not getattr(self, name):
                raise ValueError(f"registration {name} is empty")
        if not self.source_instances:
            raise ValueError("registration names no prior instances")
        if not math.isfinite(self.metric_value):
            raise ValueError(f"registration metric {self.metric!r} is {self.metric_value}")
        object.__setattr__(self, "matrix", matrix)


@dataclass(frozen=True)
class Attribution:
    """A per-voxel (per-pixel for 2D images) explanation of one output, on the source grid.

    Attributes
    ----------
    values
        ``float32`` array shaped like ``volume.shape``: ``(slices, rows, columns)``, or
        for 2D images ``(frames, rows, columns)`` with one frame per single-frame image
        and per frame of a multi-frame one. Colour (RGB) sources get one value per
        pixel, not per sample. Larger values contributed more to ``target`` (e.g.
        Grad-CAM scaled to 0-1).
    method
        How it was computed, as shown to readers (``"Grad-CAM"``, ``"occlusion"``).
    target
        What it explains, as shown to readers (``"Liver"``, a finding's name).
    label_value
        Template label value it explains, when it explains a segment.
    finding
        Key of the template classification or detection it explains, when it does.
    """

    values: np.ndarray
    method: str
    target: str
    label_value: int | None = None
    finding: str | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 3:
            raise ValueError(f"attribution map must be 3-D, got shape {self.values.shape}")
        if not np.isfinite(self.values).all():
            raise ValueError("attribution map holds NaN or infinite values")
        if not self.method.strip() or not self.target.strip():
            raise ValueError("attribution needs a method and a target")


@dataclass(frozen=True)
class DerivedImage:
    """A new image computed from the source (denoised, synthesised…), on the source grid.

    Attributes
    ----------
    values
        Array shaped like ``volume.shape`` in the source's real-world values (HU for CT;
        for a MONOCHROME1 source the volume's inverted values, higher is brighter); for
        a colour (RGB) source either that (a grayscale result) or shaped like
        ``volume.array``, ``(frames, rows, columns, 3)`` RGB 0-255.
    description
        What was done, for Derivation Description (e.g. ``"Denoised by a residual UNet"``).
    """

    values: np.ndarray
    description: str

    def __post_init__(self) -> None:
        rgb = self.values.ndim == 4 and self.values.shape[-1] == 3
        if self.values.ndim != 3 and not rgb:
            raise ValueError(
                f"derived image must be 3-D, or 3-D with a last axis of 3 RGB samples, "
                f"got shape {self.values.shape}"
            )
        if not np.isfinite(self.values).all():
            raise ValueError("derived image holds NaN or infinite values")
        if not self.description.strip():
            raise ValueError("derived image needs a description")


@dataclass
class Prediction:
    """A routine's output on the source grid.

    A segmentation routine fills ``label_map``; a classifier ``classifications``; a
    detector ``detections``. Other fields are optional additions.

    Attributes
    ----------
    label_map
        Integer array shaped like ``volume.shape`` (``volume.array`` without the
        colour axis of RGB images); 0 is background, other
        values are the template's label values. None when the routine does not
        segment.
    measurements
        ``{label value: {measurement key: value}}``; keys are the ones the
        template declares (e.g. ``volume_cm3``, ``mean_hu``).
    findings
        Free-form qualitative findings ``{label value: {finding key: code key}}``.
    probabilities
        Optional ``float32`` array ``(labels, slices, rows, columns)``.
    classifications
        Findings with probabilities (:class:`Classification`).
    detections
        Boxes or points with scores (:class:`Detection`).
    registration
        A prior series registered to this one (:class:`Registration`), from routines
        that declare ``needs_prior``.
    attribution
        Optional explanation map (:class:`Attribution`).
    derived_image
        Optional new image from an image-to-image routine (:class:`DerivedImage`).
    """

    label_map: np.ndarray | None = None
    measurements: dict[int, dict[str, float]] = field(default_factory=dict)
    findings: dict[int, dict[str, str]] = field(default_factory=dict)
    probabilities: np.ndarray | None = None
    classifications: list[Classification] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    registration: Registration | None = None
    attribution: Attribution | None = None
    derived_image: DerivedImage | None = None


class InferencePlugin(abc.ABC):
    """Base class of every inference routine.

    Subclasses set :attr:`name`, :attr:`version`, :attr:`template` and
    :attr:`accepts` (class attributes for code plugins; instance attributes for
    plugins configured in the node's YAML) and implement :meth:`run`;
    :meth:`load` is called once per worker before the first job. The node
    checks :attr:`accepts` and then calls :meth:`check` for anything a
    declaration cannot express.
    """

    name: str
    version: str
    #: File name (stem) of the result template in ``dicom_sr_templates/``.
    template: str
    accepts: Accepts = Accepts()
    resources: Resources = Resources()
    #: The routine needs a prior series of the same patient (``RunContext.prior``); the
    #: node looks one up before ``run`` and fails the job, saying why, when there is none.
    needs_prior: bool = False
    #: The input the routine was validated on (None: the quality gate does not run).
    validated_on: ValidatedInput | None = None

    def load(self, device: torch.device) -> None:  # noqa: B027 - optional hook
        """Load weights or warm up on ``device``; called once per worker."""

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Release device memory (the model cache evicted this instance)."""

    def check(self, volume: Volume) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~node.errors.InputRejected` for input :attr:`accepts` cannot describe."""

    @abc.abstractmethod
    def run(self, volume: Volume, context: RunContext) -> Prediction:
        """Run inference and return a prediction on the source grid."""


def check_input(plugin: InferencePlugin, volume: Volume) -> None:
    """What the node does before ``run``: the declared :class:`Accepts`, then ``check()``."""
    plugin.accepts.check(volume)
    plugin.check(volume)


#: Makes a plugin instance (one per device); a class or a configured model's closure.
Factory = Callable[[], InferencePlugin]


@dataclass(frozen=True)
class PluginInfo:
    """What is known about a plugin without loading it."""

    name: str
    version: str
    template: str
    source: str
    accepts: Accepts = field(default_factory=Accepts)
    resources: Resources = field(default_factory=Resources)
    #: The input the routine was validated on (the input-quality gate's reference).
    validated_on: ValidatedInput | None = None
    #: The routine registers a prior series of the same patient (found before it runs).
    needs_prior: bool = False
