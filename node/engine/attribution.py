"""Segmentation-aware Grad-CAM through the engine (array logic only).

Grad-CAM explains a *score*; for a segmentation network the score of an organ is the
mean logit of its channel over the voxels the network assigns to it (Seg-Grad-CAM,
Vinogradova et al., AAAI 2020). :class:`SegmentScore` wraps the network so that it
returns these per-channel scores, and MONAI's :class:`~monai.visualize.GradCAM` (or
:class:`~monai.visualize.GradCAMpp`) computes the map at one layer, or MONAI's
:class:`~monai.visualize.VanillaGrad` the gradient of the score with respect to the input
(``"gradient saliency"``: its magnitude, smoothed with MONAI's ``GaussianSmooth``).
Grad-CAM assumes non-negative activations (ReLU); on networks with signed activations
(PReLU, as MONAI's UNet) it can come out inverted, which the gradient does not. The volume takes
the engine's path (reorientation, intensity window, resampling to the model spacing:
:func:`node.engine.inference.preprocess`), is padded at the end of each axis to a
multiple of the network's total stride, and the map comes back the same way: cropped,
resampled trilinearly to the source grid
(:func:`~node.engine.inference.resample_to_source`, as the engine resamples
probabilities) and permuted to storage order. Values are 0-1 (MONAI's min-max
normalisation). The whole model grid goes through the network at once (gradients
need the full graph): a 4 mm model grid of a chest-abdomen CT is about 100³ voxels.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import DivisiblePad, GaussianSmooth
from monai.visualize import GradCAM, GradCAMpp, VanillaGrad

from node.contract.geometry import reorientation
from node.engine.inference import ModelSpec, preprocess, resample_to_source

log = logging.getLogger(__name__)

Method = Literal["Grad-CAM", "Grad-CAM++", "gradient saliency"]
_CAMS = {"Grad-CAM": GradCAM, "Grad-CAM++": GradCAMpp}
#: Gaussian smoothing (model voxels) of the gradient magnitude of ``"gradient saliency"``.
SALIENCY_SIGMA = 1.0


class SegmentScore(torch.nn.Module):
    """``(B, C)`` scores of a segmentation network: channel ``c``'s mean logit where it wins.

    A channel that wins nowhere scores its mean logit over the whole image.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        channels = logits.shape[1]
        with torch.no_grad():
            winners = F.one_hot(logits.argmax(1), channels).movedim(-1, 1).to(logits.dtype)
            counts = winners.flatten(2).sum(-1)
            weights = torch.where(counts[..., None] > 0, winners.flatten(2), 1.0)
            weights = weights / weights.sum(-1, keepdim=True)
        scores: torch.Tensor = (logits.flatten(2) * weights).sum(-1)
        return scores


def segment_attribution(
    network: torch.nn.Module,
    hu: np.ndarray,
    affine: np.ndarray,
    spacing: tuple[float, float, float],
    spec: ModelSpec,
    device: torch.device,
    *,
    channel: int,
    layer: str,
    divisor: int = 8,
    method: Method = "Grad-CAM",
) -> np.ndarray:
    """Grad-CAM of one output channel, as ``float32`` 0-1 on the source grid (storage order).

    Parameters
    ----------
    network
        The segmentation network on ``device`` in eval mode (weights need not require
        gradients; the activations do).
    hu, affine, spacing
        ``Volume.array``, ``Volume.affine`` and ``Volume.spacing``.
    spec
        The model's expectations (as for :func:`node.engine.inference.segment`).
    channel
        Output channel explained (label ``channel`` of ``spec.labels``).
    layer
        Name of the layer whose activations are weighted (``network.named_modules()``).
    divisor
        The network's total stride: the model grid is padded to a multiple of it.
    method
        ``"Grad-CAM"`` or ``"Grad-CAM++"`` (MONAI's implementations).
    """
    if not 0 < channel < len(spec.labels):
        raise ValueError(f"channel {channel} is not a foreground label of {spec.labels}")
    names = {name for name, _ in network.named_modules()}
    if layer not in names:
        raise ValueError(f"the network has no layer {layer!r}")
    orient = reorientation(affine, spec.axcodes)
    source = orient.to_model(torch.from_numpy(hu))
    with torch.no_grad():
        image = preprocess(source.to(device), orient.model_spacing(spacing), spec)[0]
    model_shape = tuple(image.shape[1:])
    padded = DivisiblePad(k=divisor, method="end")(image)
    padded_tensor = torch.as_tensor(padded)[None].to(device)
    score = SegmentScore(network)
    with torch.enable_grad():
        if method == "gradient saliency":
            gradient = VanillaGrad(score)(padded_tensor.clone(), index=channel)
            magnitude = torch.as_tensor(gradient).detach().abs().float()[0]
            # The stride-2 transposed convolutions leave a checkerboard in raw gradients.
            saliency = torch.as_tensor(GaussianSmooth(sigma=SALIENCY_SIGMA)(magnitude))[None]
            saliency = saliency / saliency.max().clamp(min=1e-12)
        else:
            cam = _CAMS[method](nn_module=score, target_layers=f"network.{layer}")
            saliency = torch.as_tensor(cam(padded_tensor, class_idx=channel)).detach().float()
    a, b, c = model_shape
    on_model_grid = saliency[:, :, :a, :b, :c]
    model_spacing = orient.model_spacing(spacing)
    on_source = resample_to_source(
        on_model_grid[0], tuple(source.shape), model_spacing, spec.spacing_mm
    )[0]
    stored = orient.to_storage(on_source.clamp(0.0, 1.0)).cpu().numpy()
    return np.ascontiguousarray(stored, dtype=np.float32)


__all__ = ["Method", "SegmentScore", "segment_attribution"]
