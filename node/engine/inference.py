"""The segmentation execution path shared by every model plugin (array logic only).

One volume goes through::

    storage order ──permute/flip──▶ model axis order (exact, a view)
      ──to device──▶ intensity window ──trilinear──▶ model spacing
      ──sliding_window_inference (autocast on CUDA)──▶ logits on the model grid
      ──separable linear interpolation + argmax, in slabs──▶ labels on the source grid
      ──permute/flip back──▶ uint8 label map in storage order (copied to the CPU once)

Resampling keeps the field of view: a source axis of ``n`` voxels of ``s`` mm
becomes ``round(n * s / t)`` voxels of about ``t`` mm, and voxel centres map
with the ``align_corners=False`` convention both ways, so upsampling the
logits lands exactly on the source voxel centres. Logits are interpolated
(not labels), which keeps boundaries sub-voxel accurate; the full-resolution
logits never exist at once (slab by slab), so memory stays bounded.

On CUDA the window batch, the aggregation and the argmax stay on the GPU and
only the final ``uint8`` labels are copied back. :func:`segment` retries a
CUDA out-of-memory error with half the window batch, then with aggregation in
host memory, then on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from node.contract.geometry import Reorientation, check_axcodes, reorientation

log = logging.getLogger(__name__)

T = TypeVar("T")

Network = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class IntensityWindow:
    """Linear intensity scaling like MONAI's ``ScaleIntensityRange``.

    ``a_min..a_max`` (HU) maps to ``b_min..b_max``; values outside are clipped
    when ``clip`` is true.
    """

    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        scaled = (values - self.a_min) * ((self.b_max - self.b_min) / (self.a_max - self.a_min))
        scaled = scaled + self.b_min
        if self.clip:
            low, high = sorted((self.b_min, self.b_max))
            scaled = scaled.clamp_(low, high)
        return scaled


@dataclass(frozen=True)
class ModelSpec:
    """What a segmentation network expects and how to run it.

    Attributes
    ----------
    spacing_mm
        Voxel spacing the network was trained at, in model axis order.
    axcodes
        Axis codes of the network's input (``"RAS"`` as MONAI's ``Orientation``).
    window
        Intensity scaling applied before the network.
    labels
        Output channel names; channel ``i`` becomes label value ``i`` (0 background).
    roi_size
        Sliding-window size in voxels.
    overlap
        Sliding-window overlap fraction.
    sw_batch_size
        Windows per forward pass (on CPU and as the starting value on GPU).
    blend
        Sliding-window blending (``gaussian`` or ``constant``).
    """

    spacing_mm: tuple[float, float, float]
    window: IntensityWindow
    labels: tuple[str, ...]
    axcodes: str = "RAS"
    roi_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = 0.25
    sw_batch_size: int = 4
    blend: Literal["gaussian", "constant"] = "gaussian"

    def __post_init__(self) -> None:
        check_axcodes(self.axcodes)
        if len(self.labels) < 2:
            raise ValueError("a segmentation model needs a background and at least one label")
        if any(s <= 0 for s in self.spacing_mm):
            raise ValueError("spacing must be positive")


@dataclass
class ExecutionOptions:
    """How to execute on one device.

    Attributes
    ----------
    amp
        ``torch.autocast`` float16 on CUDA (ignored on the CPU, which runs float32).
    sw_batch_size
        Overrides the spec's window batch (``None``: the spec's).
    slab
        Source slices (along model axis 2) upsampled and reduced per step.
    should_stop
        Called between window batches; raise from it to abandon the job (timeouts).
    """

    amp: bool = True
    sw_batch_size: int | None = None
    slab: int = 32
    should_stop: Callable[[], None] = field(default=lambda: None)


def model_grid_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, int, int]:
    """Voxels per axis at the target spacing, keeping the field of view."""
    sizes = [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True)]
    return (sizes[0], sizes[1], sizes[2])


def preprocess(hu: torch.Tensor, spacing: Sequence[float], spec: ModelSpec) -> torch.Tensor:
    """Window and resample a model-order ``(a, b, c)`` HU tensor to ``(1, 1, …)`` at model spacing.

    Runs on whatever device ``hu`` is on, in float32.
    """
    image = spec.window.apply(hu.to(torch.float32))[None, None]
    size = model_grid_shape(hu.shape, spacing, spec.spacing_mm)
    if tuple(image.shape[2:]) == size:
        return image.contiguous()
    return F.interpolate(image, size=size, mode="trilinear", align_corners=False)


def _linear_weights(
    n_out: int, n_in: int, start: int, stop: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of output positions ``start..stop`` (align_corners=False)."""
    scale = n_in / n_out
    position = (torch.arange(start, stop, device=device, dtype=torch.float64) + 0.5) * scale - 0.5
    position = position.clamp(min=0.0)
    lower = position.floor().long().clamp(max=n_in - 1)
    upper = (lower + 1).clamp(max=n_in - 1)
    weight = (position - lower.to(torch.float64)).to(torch.float32)
    return lower, upper, weight


def logits_to_labels(
    logits: torch.Tensor, out_shape: Sequence[int], slab: int = 32
) -> torch.Tensor:
    """Trilinearly upsample ``(1, C, a, b, c)`` logits to ``out_shape`` and take the argmax.

    Equivalent to ``F.interpolate(logits, out_shape, mode="trilinear",
    align_corners=False).argmax(1)`` but done slab by slab along the last axis,
    so only ``C * slab`` full-resolution planes exist at a time. Returns a
    ``uint8`` tensor (``int16`` above 255 classes) on the logits' device.
    """
    _, channels, a, b, c = logits.shape
    n0, n1, n2 = (int(v) for v in out_shape)
    dtype = torch.uint8 if channels <= 256 else torch.int16
    labels = torch.empty((n0, n1, n2), dtype=dtype, device=logits.device)
    # In-plane (axes 0, 1) first at model resolution is cheap; do axis 2 per slab.
    source = logits[0].to(torch.float32)
    for start in range(0, n2, slab):
        stop = min(n2, start + slab)
        lower, upper, weight = _linear_weights(n2, c, start, stop, logits.device)
        planes = source[..., lower] * (1.0 - weight) + source[..., upper] * weight  # (C,a,b,k)
        planes = planes.permute(3, 0, 1, 2)  # (k, C, a, b)
        if (a, b) != (n0, n1):
            planes = F.interpolate(planes, size=(n0, n1), mode="bilinear", align_corners=False)
        labels[:, :, start:stop] = planes.argmax(1).permute(1, 2, 0).to(dtype)
    return labels


def sliding_logits(
    network: Network,
    image: torch.Tensor,
    spec: ModelSpec,
    *,
    sw_batch_size: int,
    sw_device: torch.device,
    out_device: torch.device,
    amp: bool,
    should_stop: Callable[[], None],
) -> torch.Tensor:
    """Sliding-window logits ``(1, C, …)`` of a ``(1, 1, …)`` image, float32 on ``out_device``."""

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        should_stop()
        return network(windows)

    use_amp = amp and sw_device.type == "cuda"
    with (
        torch.inference_mode(),
        torch.autocast(device_type=sw_device.type, dtype=torch.float16, enabled=use_amp),
    ):
        logits = sliding_window_inference(
            image,
            roi_size=spec.roi_size,
            sw_batch_size=sw_batch_size,
            predictor=predictor,
            overlap=spec.overlap,
            mode=spec.blend,
            sw_device=sw_device,
            device=out_device,
        )
    assert isinstance(logits, torch.Tensor)
    return logits.as_tensor().float() if hasattr(logits, "as_tensor") else logits.float()


@dataclass(frozen=True)
class Segmentation:
    """A label map in storage order plus how it was computed."""

    labels: np.ndarray
    device: torch.device
    sw_batch_size: int
    attempts: tuple[str, ...]


def _run_on(
    network: Network,
    hu: np.ndarray,
    orient: Reorientation,
    spacing: tuple[float, float, float],
    spec: ModelSpec,
    device: torch.device,
    out_device: torch.device,
    sw_batch_size: int,
    options: ExecutionOptions,
) -> np.ndarray:
    source = orient.to_model(torch.from_numpy(hu))
    with torch.inference_mode():
        on_device = source.to(device, non_blocking=True)
        model_spacing = orient.model_spacing(spacing)
        image = preprocess(on_device, model_spacing, spec)
        del on_device
        logits = sliding_logits(
            network,
            image,
            spec,
            sw_batch_size=sw_batch_size,
            sw_device=device,
            out_device=out_device,
            amp=options.amp,
            should_stop=options.should_stop,
        )
        del image
        labels = logits_to_labels(logits, source.shape, slab=options.slab)
        del logits
        stored = orient.to_storage(labels).cpu()
    return np.ascontiguousarray(stored.numpy())


def segment(
    network: Network,
    hu: np.ndarray,
    affine: np.ndarray,
    spacing: tuple[float, float, float],
    spec: ModelSpec,
    device: torch.device,
    options: ExecutionOptions | None = None,
    *,
    to_device: Callable[[torch.device], Network] | None = None,
) -> Segmentation:
    """Segment a storage-order HU volume; the label map has exactly its shape.

    Parameters
    ----------
    network
        The network, already on ``device`` and in eval mode.
    hu, affine, spacing
        ``Volume.array``, ``Volume.affine`` and ``Volume.spacing``.
    spec
        The model's expectations.
    device
        Where to run.
    options
        Execution options (AMP, window batch, slab size, stop hook).
    to_device
        Returns the network on another device; needed for the CPU fallback
        after CUDA runs out of memory (without it the error propagates).

    Raises
    ------
    ValueError
        If the volume's geometry cannot be reoriented to ``spec.axcodes``.
    torch.cuda.OutOfMemoryError
        If even the CPU fallback is unavailable.
    """
    options = options or ExecutionOptions()
    orient = reorientation(affine, spec.axcodes)
    networks = {device: network}

    def attempt(run_device: torch.device, out_device: torch.device, sw_batch: int) -> np.ndarray:
        if run_device not in networks:
            if to_device is None:
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory and no way to move the network to the CPU"
                )
            networks[run_device] = to_device(run_device)
        return _run_on(
            networks[run_device],
            hu,
            orient,
            spacing,
            spec,
            run_device,
            out_device,
            sw_batch,
            options,
        )

    labels, plan, attempts = run_with_fallback(
        device, options.sw_batch_size or spec.sw_batch_size, attempt
    )
    return Segmentation(labels, plan.run_device, plan.sw_batch_size, attempts)


@dataclass(frozen=True)
class ExecutionPlan:
    """Where the windows run, where their outputs are aggregated, and how many at once."""

    run_device: torch.device
    out_device: torch.device
    sw_batch_size: int

    def __str__(self) -> str:
        return f"{self.run_device}/{self.out_device}/sw{self.sw_batch_size}"


def execution_plans(device: torch.device, sw_batch_size: int) -> list[ExecutionPlan]:
    """What to try, in order, while CUDA runs out of memory.

    On a GPU: the window batch halved down to 1, then aggregation in host memory
    (windows of 1 on the GPU), then everything on the CPU. Elsewhere: just the one plan.
    """
    plans = [ExecutionPlan(device, device, sw_batch_size)]
    if device.type == "cuda":
        smaller = sw_batch_size // 2
        while smaller >= 1:
            plans.append(ExecutionPlan(device, device, smaller))
            smaller //= 2
        plans.append(ExecutionPlan(device, torch.device("cpu"), 1))
        plans.append(ExecutionPlan(torch.device("cpu"), torch.device("cpu"), sw_batch_size))
    return plans


def run_with_fallback(
    device: torch.device,
    sw_batch_size: int,
    attempt: Callable[[torch.device, torch.device, int], T],
) -> tuple[T, ExecutionPlan, tuple[str, ...]]:
    """Run ``attempt(run_device, out_device, sw_batch_size)`` through :func:`execution_plans`
    until one does not run out of CUDA memory; the node's engine and MONAI bundles share it.

    Returns the result, the plan that gave it and every plan tried (``str``).

    Raises
    ------
    torch.cuda.OutOfMemoryError
        From a plan on the CPU (it is not retried), or when every plan ran out.
    """
    attempts: list[str] = []
    for plan in execution_plans(device, sw_batch_size):
        attempts.append(str(plan))
        try:
            result = attempt(plan.run_device, plan.out_device, plan.sw_batch_size)
        except torch.cuda.OutOfMemoryError as exc:
            log.warning(
                "CUDA out of memory device=%s aggregate=%s sw_batch_size=%d error=%s",
                plan.run_device,
                plan.out_device,
                plan.sw_batch_size,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if plan.run_device.type != "cuda":
                raise
            continue
        return result, plan, tuple(attempts)
    raise torch.cuda.OutOfMemoryError("CUDA out of memory in every execution plan")


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice coefficient of one label (1.0 when both are empty)."""
    p, t = prediction == label, truth == label
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


__all__ = [
    "ExecutionOptions",
    "ExecutionPlan",
    "IntensityWindow",
    "ModelSpec",
    "Segmentation",
    "dice",
    "execution_plans",
    "logits_to_labels",
    "model_grid_shape",
    "preprocess",
    "run_with_fallback",
    "segment",
    "sliding_logits",
]
