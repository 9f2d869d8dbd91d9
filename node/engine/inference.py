"""The segmentation execution path shared by every model plugin (array logic only).

One volume goes through::

    storage order ──permute/flip──▶ model axis order (exact, a view)
      ──to device──▶ trilinear to model spacing ──▶ intensity window
      ──sliding_window_inference (autocast on CUDA)──▶ logits on the model grid
      ──softmax, trilinear back + argmax, in slabs──▶ labels on the source grid
      ──permute/flip back──▶ uint8 label map in storage order (copied to the CPU once)

Resampling is MONAI's ``Spacing`` and its inverse (what ``Invertd`` does), computed
as separable linear interpolation: the first voxel centre stays, model voxel ``i``
samples source coordinate ``i * t / s``, and source voxel ``j`` reads model coordinate
``j * s / t`` (border padding). A plain MONAI pipeline with the same network and
windows (``Spacingd`` → ``ScaleIntensityRanged`` → ``sliding_window_inference`` →
softmax → ``Invertd`` → argmax) therefore gives the same labels; only the order of the
work differs: the window is applied on the small model grid, and the
full-resolution probabilities never exist at once (slab by slab), so memory stays bounded.

On CUDA the window batch, the aggregation and the argmax stay on the GPU and
only the final ``uint8`` labels are copied back. :func:`segment` retries a
CUDA out-of-memory error with half the window batch, then with aggregation in
host memory, then on the CPU.
"""

from __future__ import annotations

import logging
import time
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
    """Voxels per axis at the target spacing, as MONAI's ``Spacing`` counts them.

    The first voxel centre stays where it is and the grid spans the source's voxel
    centres: ``round((n - 1) * s / t) + 1`` voxels of ``t`` mm.
    """
    sizes = [
        max(1, int(np.round((n - 1) * s / t + 1.0)))
        for n, s, t in zip(shape, spacing, target, strict=True)
    ]
    return (sizes[0], sizes[1], sizes[2])


def _coordinates(
    n_in: int, start: int, stop: int, step: float, device: torch.device
) -> torch.Tensor:
    """``grid_sample`` coordinates (``align_corners=True``) of grid voxels ``start..stop``
    spaced ``step`` source voxels apart from the first source voxel, clamped to the
    source (MONAI's default ``padding_mode="border"``)."""
    position = torch.arange(start, stop, device=device, dtype=torch.float64) * step
    position = position.clamp(0.0, float(n_in - 1))
    if n_in == 1:
        return torch.zeros_like(position, dtype=torch.float32)
    return (position * (2.0 / (n_in - 1)) - 1.0).to(torch.float32)


def resample_to_model(
    values: torch.Tensor, spacing: Sequence[float], target: Sequence[float]
) -> torch.Tensor:
    """Trilinear resampling of the last three axes to ``target`` spacing, float32.

    MONAI's ``Spacing(pixdim=target, mode="bilinear")`` on an image already in model
    orientation: grid voxel ``i`` samples source coordinate ``i * t / s`` (border
    padding). Leading axes (channels) are kept.
    """
    lead = tuple(values.shape[:-3])
    shape = tuple(int(n) for n in values.shape[-3:])
    size = model_grid_shape(shape, spacing, target)
    image = values.reshape(1, -1, *shape).to(torch.float32)
    if size == shape and tuple(spacing) == tuple(target):
        return image.reshape(*lead, *shape)
    axes = [
        _coordinates(n, 0, m, t / s, values.device)
        for n, m, s, t in zip(shape, size, spacing, target, strict=True)
    ]
    ga, gb, gc = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack((gc, gb, ga), dim=-1)[None]  # grid_sample wants (x, y, z) = (c, b, a)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(*lead, *size)


def preprocess(hu: torch.Tensor, spacing: Sequence[float], spec: ModelSpec) -> torch.Tensor:
    """Resample a model-order ``(a, b, c)`` HU tensor to model spacing, then window it.

    Returns ``(1, 1, …)`` float32 on ``hu``'s device. The order is MONAI's
    (``Spacingd`` then ``ScaleIntensityRanged``): clipping after interpolation.
    """
    image = resample_to_model(hu, spacing, spec.spacing_mm)
    if image.data_ptr() == hu.data_ptr():
        image = image.clone()
    return spec.window.apply(image)[None, None].contiguous()


def _planes_on_source(
    values: torch.Tensor,
    out_shape: Sequence[int],
    spacing: Sequence[float],
    target: Sequence[float],
    start: int,
    stop: int,
) -> torch.Tensor:
    """Source planes ``start..stop`` of the last axis as ``(k, C, n0, n1)`` float32."""
    _, a, b, c = values.shape
    device = values.device
    # Along the last axis at model resolution (cheap), then each plane in 2-D.
    position = torch.arange(start, stop, device=device, dtype=torch.float64)
    position = (position * (spacing[2] / target[2])).clamp(0.0, float(c - 1))
    lower = position.floor().long()
    upper = (lower + 1).clamp(max=c - 1)
    weight = (position - lower.to(torch.float64)).to(torch.float32)
    source = values.to(torch.float32)
    planes = torch.lerp(source.index_select(3, lower), source.index_select(3, upper), weight)
    planes = planes.permute(3, 0, 1, 2).contiguous()  # (k, C, a, b)
    n0, n1 = int(out_shape[0]), int(out_shape[1])
    if (n0, n1) == (a, b) and tuple(spacing[:2]) == tuple(target[:2]):
        return planes
    g0 = _coordinates(a, 0, n0, spacing[0] / target[0], device)
    g1 = _coordinates(b, 0, n1, spacing[1] / target[1], device)
    gx, gy = torch.meshgrid(g0, g1, indexing="ij")
    grid = torch.stack((gy, gx), dim=-1)[None].expand(stop - start, -1, -1, -1)
    return F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=True)


def resample_to_source(
    values: torch.Tensor,
    out_shape: Sequence[int],
    spacing: Sequence[float],
    target: Sequence[float],
) -> torch.Tensor:
    """Model-grid ``(C, a, b, c)`` values back on the source grid ``out_shape``, float32.

    The inverse of :func:`resample_to_model` as MONAI's ``Invertd`` computes it:
    source voxel ``j`` reads model coordinate ``j * s / t`` (trilinear, border).
    Returns ``(C, n0, n1, n2)``.
    """
    planes = _planes_on_source(values, out_shape, spacing, target, 0, int(out_shape[2]))
    return planes.permute(1, 2, 3, 0)


def logits_to_labels(
    logits: torch.Tensor,
    out_shape: Sequence[int],
    spacing: Sequence[float],
    target: Sequence[float],
    slab: int = 32,
) -> torch.Tensor:
    """Softmax of ``(1, C, a, b, c)`` logits, resampled to the source grid, argmax.

    What MONAI's ``Activationsd(softmax)`` → ``Invertd`` → ``AsDiscreted(argmax)``
    computes (``spacing``: the source's, ``target``: the model's), but slab by slab
    along the last axis so only ``C * slab`` full-resolution planes exist at a time.
    The argmax is a running comparison over channels (first maximum wins, as
    ``argmax``), much faster than a strided reduction. Returns a ``uint8`` (``int16``
    above 256 classes) view shaped ``out_shape`` on the logits' device.
    """
    _, channels, _, _, _ = logits.shape
    n0, n1, n2 = (int(v) for v in out_shape)
    dtype = torch.uint8 if channels <= 256 else torch.int16
    labels = torch.empty((n2, n0, n1), dtype=dtype, device=logits.device)
    probabilities = torch.softmax(logits[0].to(torch.float32), dim=0)
    for start in range(0, n2, slab):
        stop = min(n2, start + slab)
        planes = _planes_on_source(probabilities, out_shape, spacing, target, start, stop)
        best = planes[:, 0].clone()
        winner = torch.zeros(best.shape, dtype=dtype, device=logits.device)
        for channel in range(1, channels):
            candidate = planes[:, channel]
            better = candidate > best
            best = torch.maximum(best, candidate)
            winner.masked_fill_(better, channel)
        labels[start:stop] = winner
        del planes
    return labels.permute(1, 2, 0)


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
    """A label map in storage order plus how it was computed.

    ``stages`` holds the seconds of each step of the plan that succeeded (``to_device``,
    ``preprocess``, ``sliding_window``, ``to_source``, ``to_host``), read after
    ``torch.cuda.synchronize`` on CUDA so they are the device's real times.
    """

    labels: np.ndarray
    device: torch.device
    sw_batch_size: int
    attempts: tuple[str, ...]
    stages: dict[str, float] = field(default_factory=dict)


class _StageClock:
    """Seconds per stage; on CUDA each reading waits for the device's queued work."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stages: dict[str, float] = {}
        self._last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def mark(self, stage: str) -> None:
        now = self._now()
        self.stages[stage] = now - self._last
        self._last = now


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
) -> tuple[np.ndarray, dict[str, float]]:
    clock = _StageClock(device)
    with torch.inference_mode():
        host = torch.from_numpy(hu)
        if device.type == "cuda":
            # Page-locked memory lets the copy run as one DMA transfer; the reorientation
            # (a flip copies) then happens on the device.
            torch.backends.cudnn.benchmark = True
            host = host.pin_memory()
        source = orient.to_model(host.to(device, non_blocking=True))
        clock.mark("to_device")
        model_spacing = orient.model_spacing(spacing)
        image = preprocess(source, model_spacing, spec)
        source_shape = tuple(source.shape)
        del source, host
        clock.mark("preprocess")
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
        clock.mark("sliding_window")
        labels = logits_to_labels(
            logits, source_shape, model_spacing, spec.spacing_mm, slab=options.slab
        )
        del logits
        clock.mark("to_source")
        stored = np.ascontiguousarray(orient.to_storage(labels).cpu().numpy())
        clock.mark("to_host")
    return stored, clock.stages


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

    def attempt(
        run_device: torch.device, out_device: torch.device, sw_batch: int
    ) -> tuple[np.ndarray, dict[str, float]]:
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

    (labels, stages), plan, attempts = run_with_fallback(
        device, options.sw_batch_size or spec.sw_batch_size, attempt
    )
    return Segmentation(labels, plan.run_device, plan.sw_batch_size, attempts, stages)


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
    "resample_to_model",
    "resample_to_source",
    "run_with_fallback",
    "segment",
    "sliding_logits",
]
