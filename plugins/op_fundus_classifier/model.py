"""The demonstration fundus classifier and its preprocessing (plugin and ``train.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution

#: The finding the network scores (a key of the ``op_fundus_classifier`` template).
FINDING = "dr_lesions"
#: Rows = columns of the network input.
INPUT_SIZE = 384
#: Operating threshold on the probability, chosen on the training-time validation set
#: (see README.md); the template carries the same value.
THRESHOLD = 0.36

#: Shipped weights (``state_dict`` of :func:`build_network`), written by ``train.py``.
WEIGHTS = Path(__file__).resolve().parent / "weights" / "op_fundus_lesionnet.pt"


class LesionPoolingNet(torch.nn.Module):
    """A small fully convolutional lesion detector pooled into one image logit.

    Four MONAI :class:`~monai.networks.blocks.Convolution` blocks (conv, batch norm,
    ReLU; three with stride 2, so 1/8 of the input size) end in a 1x1 convolution
    giving a lesion logit per location; the image logit is the mean of the ``top``
    highest locations. The finding is "any lesion anywhere", which a (soft) maximum
    expresses directly as multiple-instance learning, and :meth:`lesion_map` shows
    where it is.
    """

    def __init__(self, top: int = 8) -> None:
        super().__init__()
        channels = ((3, 16, 2), (16, 32, 2), (32, 64, 2), (64, 64, 1))
        self.features = torch.nn.Sequential(
            *(
                Convolution(2, cin, cout, strides=stride, kernel_size=3, norm="batch", act="relu")
                for cin, cout, stride in channels
            )
        )
        self.head = torch.nn.Conv2d(64, 1, kernel_size=1)
        self.top = top

    def lesion_map(self, batch: torch.Tensor) -> torch.Tensor:
        """Lesion logits ``(n, 1, s/8, s/8)``."""
        return self.head(self.features(batch))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        scores = self.lesion_map(batch).flatten(1)
        return scores.topk(min(self.top, scores.shape[1]), dim=1).values.mean(dim=1, keepdim=True)


def build_network() -> torch.nn.Module:
    """The classifier: :class:`LesionPoolingNet` (about 60 k parameters)."""
    return LesionPoolingNet()


#: Gaussian sigma (network-input pixels) of the local mean each pixel is divided by.
LOCAL_SIGMA = 12.0


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(channels, rows, columns)`` with replicated edges."""
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    x = F.pad(image[None], (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return x[0]


def preprocess(rgb: np.ndarray) -> torch.Tensor:
    """An RGB photograph ``(rows, columns, 3)`` → network input ``(3, INPUT_SIZE, INPUT_SIZE)``.

    The image is padded to a square around its centre (black, like the area outside
    the field of view) and resized with antialiasing; each pixel is then divided by
    the local mean of its channel inside the field of view (Gaussian, sigma
    :data:`LOCAL_SIGMA`) and centred on 0, clipped to -1..1. This removes illumination,
    camera gain and pigmentation and keeps what is small: vessels and lesions (the
    usual local-contrast normalisation of fundus photographs for DR screening).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (rows, columns, 3), got shape {rgb.shape}")
    rows, columns, _ = rgb.shape
    side = max(rows, columns)
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    pad_r, pad_c = side - rows, side - columns
    image = F.pad(image, (pad_c // 2, pad_c - pad_c // 2, pad_r // 2, pad_r - pad_r // 2))
    image = F.interpolate(
        image[None], size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True
    )[0]
    field = (image.sum(0, keepdim=True) > 0.08).float()
    if float(field.mean()) < 0.05:
        raise ValueError("no field of view found: the photograph is (nearly) black")
    local = _gaussian_blur(image * field, LOCAL_SIGMA) / _gaussian_blur(
        field, LOCAL_SIGMA
    ).clamp_min(1e-3)
    return ((image / local.clamp_min(0.02) - 1.0) * field).clamp(-1.0, 1.0)


def probabilities(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Probability of the finding for each image of a preprocessed batch ``(n, 3, s, s)``."""
    with torch.inference_mode():
        return torch.sigmoid(network(batch)[:, 0])
