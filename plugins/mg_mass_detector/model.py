"""The demonstration mass detector: a centre-point network and its array logic.

Shared by the plugin and ``train.py``. The network is a MONAI 2-D UNet whose three
output channels are, per pixel of a 2 mm grid: the logit of "a mass centre is
here" and the log width and log height of that mass (in model pixels), as in
CenterNet (Zhou et al., 2019, "Objects as Points"). Images are brought to a
canonical orientation first (chest wall on the left: right breasts are mirrored),
so the network never has to learn laterality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

#: The finding the network reports (a key of the ``mg_mass_detector`` template).
FINDING = "mass"
#: Model grid spacing (mm).
MODEL_SPACING_MM = 2.0
#: Model grid sizes are padded to a multiple of this (three stride-2 levels).
MULTIPLE = 8
#: Detections below this score are not reported (chosen on the validation set by
#: ``train.py``: README.md gives its sensitivity and false positives per image).
SCORE_THRESHOLD = 0.21
#: At most this many detections per image.
MAX_DETECTIONS = 5
#: Prior probability of a centre pixel (initial bias of the heat-map logit).
PRIOR = 0.01

#: Shipped weights (``state_dict`` of :func:`build_network`), written by ``train.py``.
WEIGHTS = Path(__file__).resolve().parent / "weights" / "mg_mass_centrenet.pt"


def build_network() -> torch.nn.Module:
    """A MONAI 2-D UNet (8-16-32-64, one residual unit per level, ~50 k parameters)."""
    network = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=3,
        channels=(8, 16, 32, 64),
        strides=(2, 2, 2),
        num_res_units=1,
        norm="batch",
    )
    last = [
        m for m in network.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    with torch.no_grad():
        bias = last[-1].bias
        if bias is not None:
            bias.zero_()
            bias[0] = float(np.log(PRIOR / (1.0 - PRIOR)))
    return network


@dataclass(frozen=True)
class ModelInput:
    """A mammogram on the model grid and how to map back to the source image.

    Attributes
    ----------
    image
        ``(1, rows, columns)`` float tensor, padded to :data:`MULTIPLE`.
    scale
        Source pixels per model pixel, ``(rows, columns)``.
    size
        Model-grid size before padding ``(rows, columns)``.
    source_shape
        ``(rows, columns)`` of the source image.
    mirrored
        The source was mirrored (a right breast).
    """

    image: torch.Tensor
    scale: tuple[float, float]
    size: tuple[int, int]
    source_shape: tuple[int, int]
    mirrored: bool


def preprocess(
    pixels: np.ndarray, pixel_spacing_mm: tuple[float, float], laterality: str
) -> ModelInput:
    """A For Presentation mammogram (MONOCHROME2 values) → the network's input.

    Mirrors right breasts, resamples to :data:`MODEL_SPACING_MM` with antialiasing,
    scales intensities so the 1st and 99.5th percentiles map to 0 and 1, and pads.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected one grey-scale image (rows, columns), got shape {pixels.shape}")
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality {laterality!r} is not 'L' or 'R'")
    rows, columns = pixels.shape
    image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    if laterality == "R":
        image = image.flip(-1)
    size = (
        max(round(rows * pixel_spacing_mm[0] / MODEL_SPACING_MM), MULTIPLE),
        max(round(columns * pixel_spacing_mm[1] / MODEL_SPACING_MM), MULTIPLE),
    )
    image = F.interpolate(image[None, None], size=size, mode="bilinear", antialias=True)[0]
    low, high = (
        float(v) for v in torch.quantile(image.flatten()[::7], torch.tensor([0.01, 0.995]))
    )
    if high - low <= 0:
        raise ValueError("the mammogram has no contrast (constant pixel values)")
    image = ((image - low) / (high - low)).clamp_(-0.5, 1.5)
    pad_r = -size[0] % MULTIPLE
    pad_c = -size[1] % MULTIPLE
    image = F.pad(image, (0, pad_c, 0, pad_r))
    return ModelInput(
        image, (rows / size[0], columns / size[1]), size, (rows, columns), laterality == "R"
    )


def decode(
    output: torch.Tensor,
    model_input: ModelInput,
    threshold: float = SCORE_THRESHOLD,
    limit: int = MAX_DETECTIONS,
) -> list[tuple[float, tuple[float, float, float, float]]]:
    """Network output ``(3, rows, columns)`` → ``[(score, (x0, y0, x1, y1))]`` on the source.

    Peaks of the heat map (3x3 local maxima) at or above ``threshold``, best first;
    boxes in source-image SCOORD coordinates, mirrored back for right breasts and
    clipped to the image.
    """
    rows, columns = model_input.size
    heat = torch.sigmoid(output[0, :rows, :columns])
    peaks = heat == F.max_pool2d(heat[None, None], 3, stride=1, padding=1)[0, 0]
    candidates = torch.nonzero(peaks & (heat >= threshold))
    scores = heat[candidates[:, 0], candidates[:, 1]]
    order = torch.argsort(scores, descending=True)[:limit]
    source_rows, source_columns = model_input.source_shape
    scale_r, scale_c = model_input.scale
    found = []
    for index in order.tolist():
        r, c = candidates[index].tolist()
        width = float(torch.exp(output[1, r, c])) * scale_c
        height = float(torch.exp(output[2, r, c])) * scale_r
        x = (c + 0.5) * scale_c
        y = (r + 0.5) * scale_r
        if model_input.mirrored:
            x = source_columns - x
        box = (
            max(x - width / 2, 0.0),
            max(y - height / 2, 0.0),
            min(x + width / 2, float(source_columns)),
            min(y + height / 2, float(source_rows)),
        )
        if box[0] < box[2] and box[1] < box[3]:
            found.append((float(scores[index]), box))
    return found


def targets(
    boxes: list[tuple[float, float, float, float]], model_input: ModelInput
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training targets on the padded model grid for source-image ``boxes``.

    Returns the heat map (a Gaussian per mass, exactly 1 at its centre pixel), the
    log sizes ``(2, rows, columns)`` and the mask of centre pixels.
    """
    shape = model_input.image.shape[-2:]
    heat = torch.zeros(shape)
    sizes = torch.zeros((2, *shape))
    mask = torch.zeros(shape, dtype=torch.bool)
    scale_r, scale_c = model_input.scale
    yy, xx = torch.meshgrid(
        torch.arange(shape[0], dtype=torch.float32) + 0.5,
        torch.arange(shape[1], dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    for x0, y0, x1, y1 in boxes:
        if model_input.mirrored:
            x0, x1 = model_input.source_shape[1] - x1, model_input.source_shape[1] - x0
        width, height = (x1 - x0) / scale_c, (y1 - y0) / scale_r
        cx, cy = (x0 + x1) / 2 / scale_c, (y0 + y1) / 2 / scale_r
        sigma = max(min(width, height) / 6.0, 0.8)
        gaussian = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        heat = torch.maximum(heat, gaussian)
        r = min(int(cy), shape[0] - 1)
        c = min(int(cx), shape[1] - 1)
        heat[r, c] = 1.0
        mask[r, c] = True
        sizes[0, r, c] = float(np.log(max(width, 1.0)))
        sizes[1, r, c] = float(np.log(max(height, 1.0)))
    return heat, sizes, mask


def centre_loss(
    output: torch.Tensor, heat: torch.Tensor, sizes: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heat map plus L1 on log sizes."""
    logits = output[:, 0]
    probability = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = heat >= 1.0
    pos_loss = -((1 - probability) ** 2) * torch.log(probability) * positive
    neg_loss = -((1 - heat) ** 4) * probability**2 * torch.log(1 - probability) * ~positive
    count = max(int(positive.sum()), 1)
    focal = (pos_loss.sum() + neg_loss.sum()) / count
    chosen = mask[:, None].expand_as(sizes)
    size_loss = (
        F.l1_loss(output[:, 1:][chosen], sizes[chosen], reduction="sum") / count
        if bool(chosen.any())
        else output.sum() * 0.0
    )
    return focal + 0.5 * size_loss
