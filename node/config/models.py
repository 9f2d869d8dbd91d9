"""Configured models (TorchScript, MONAI bundle, ONNX): files, geometry, labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from node.config.base import _Strict

Plane = Literal["axial", "coronal", "sagittal"]


def _axial_only() -> list[Plane]:
    return ["axial"]


class AcceptsSettings(_Strict):
    """What a configured model accepts (see ``node.contract.plugin.Accepts``)."""

    modalities: list[str] = Field(default_factory=lambda: ["CT"])
    body_parts: list[str] = Field(default_factory=list)
    min_slices: int = Field(1, ge=1)
    max_slices: int | None = Field(None, ge=1)
    slice_spacing_mm: tuple[float, float] = (0.0, 1e9)
    pixel_spacing_mm: tuple[float, float] = (0.0, 1e9)
    min_matrix: int = Field(1, ge=1)
    planes: list[Plane] = Field(default_factory=_axial_only)
    max_obliquity_deg: float = Field(90.0, ge=0, le=90)


class ValidatedInputSettings(_Strict):
    """The input a configured model was validated on (see ``node.contract.plugin.ValidatedInput``).

    Empty lists and absent ranges are not checked.
    """

    modalities: list[str] = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)
    slice_thickness_mm: tuple[float, float] | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    #: ConvolutionKernel values, case-insensitive.
    kernels: list[str] = Field(default_factory=list)
    #: ``present``: ContrastBolusAgent must be set; ``absent``: must not; ``any``.
    contrast: Literal["any", "present", "absent"] = "any"
    photometric_interpretations: list[str] = Field(default_factory=list)
    min_bits_stored: int = Field(0, ge=0, le=32)
    #: Noise (standard deviation, HU for CT) measured in homogeneous tissue.
    noise: tuple[float, float] | None = None
    max_duplicate_slices: int = Field(0, ge=0)
    #: Fraction of voxels above ``metal_threshold`` (HU).
    max_metal_fraction: float = Field(1e-4, ge=0, le=1)
    metal_threshold: float = 2500.0
    #: Worst slice's high-frequency energy over the series' median (streaks, motion).
    max_streak_index: float = Field(3.0, gt=0)
    #: Fraction of pixels at the stored minimum or maximum value.
    max_clipped_fraction: float = Field(0.002, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> ValidatedInputSettings:
        for key in ("slice_thickness_mm", "pixel_spacing_mm", "noise"):
            value = getattr(self, key)
            if value is not None and value[0] > value[1]:
                raise ValueError(f"{key}: the lower bound {value[0]} exceeds {value[1]}")
        return self


class ResourceSettings(_Strict):
    needs_gpu: bool = False
    gpu_memory_mb: int = Field(0, ge=0)


class _ModelBase(_Strict):
    """Fields every configured model has."""

    #: Template (file stem in the templates directory) the model's labels are coded with.
    template: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    accepts: AcceptsSettings = AcceptsSettings()
    resources: ResourceSettings = ResourceSettings()
    #: Output label name → template label value; unnamed labels are matched to the
    #: template's segments by tracking id or label (case, spaces, ``-`` and ``_`` ignored).
    label_values: dict[str, int] = Field(default_factory=dict)
    #: Windows per forward pass (overrides the model's / bundle's value).
    sw_batch_size: int | None = Field(None, ge=1)
    #: Mixed precision (float16 autocast) on CUDA; the CPU always runs float32.
    amp: bool = True
    #: The input the model was validated on (the input-quality gate compares against it).
    validated_on: ValidatedInputSettings | None = None


class WindowSettings(_Strict):
    """Intensity scaling like MONAI ``ScaleIntensityRange``."""

    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True


class _NetworkModelBase(_ModelBase):
    """A segmentation network the node's engine runs: file, input geometry and labels."""

    #: Narrowed to a literal by each model type (declared here to keep the field order).
    type: str
    path: Path
    version: str = "1"
    spacing_mm: tuple[float, float, float]
    axcodes: str = Field("RAS", pattern=r"^[LRlr][APap][SIsi]$|^[A-Za-z]{3}$")
    window: WindowSettings
    #: Output channel names in order; channel 0 is the background.
    labels: list[str] = Field(min_length=2)
    roi_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = Field(0.25, ge=0, lt=1)


class TorchScriptModelSettings(_NetworkModelBase):
    """A TorchScript segmentation network with declared input geometry and labels."""

    type: Literal["torchscript"]


class BundleModelSettings(_ModelBase):
    """A MONAI bundle directory (``configs/``, ``models/``) run with its own transforms."""

    type: Literal["monai_bundle"]
    path: Path
    #: Config file inside ``configs/`` (default: ``inference.json`` or ``inference.yaml``).
    config: str | None = None


class OnnxModelSettings(_NetworkModelBase):
    """An ONNX segmentation network run with onnxruntime, declared like a TorchScript one.

    Runs on ``CUDAExecutionProvider`` when onnxruntime has it and the worker is on a
    GPU, else on ``CPUExecutionProvider``.
    """

    type: Literal["onnx"]
    #: Graph input and output names (default: the graph's only input and its first output).
    input_name: str | None = None
    output_name: str | None = None


ModelSettings = Annotated[
    TorchScriptModelSettings | BundleModelSettings | OnnxModelSettings, Field(discriminator="type")
]
