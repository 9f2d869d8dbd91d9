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
INPUT_SIZE = 256
#: Operating threshold on the probability, chosen on the training-time validation set
#: (see README.md); the template carries the same value.
THRESHOLD = 0.5

#: Shipped weights (``state_dict`` of :func:`build_network`), written by ``train.py``.
WEIGHTS = Path(__file__).resolve().parent / "weights" / "op_fundus_lesionnet.pt"


class LesionPoolingNet(torch.nn.Module):
    """A small fully convolutional lesion detector pooled into one image logit.

    Four MONAI :class:`~monai.networks.blocks.Convolution` blocks (conv, batch norm,
    ReLU; three with stride 2, so 1/8 of the input size) end in a 1x1 convolution
    giving a lesion logit per location; log-sum-exp pooling (a smooth maximum) turns
    the map into the image logit. The finding is "any lesion anywhere", which a
    smooth maximum expresses directly, and :meth:`lesion_map` shows where it is.
    """

    def __init__(self, sharpness: float = 4.0) -> None:
        super().__init__()
        channels = ((3, 16, 2), (16, 32, 2), (32, 64, 2), (64, 64, 1))
        self.features = torch.nn.Sequential(
            *(
                Convolution(2, cin, cout, strides=stride, kernel_size=3, norm="batch", act="relu")
                for cin, cout, stride in channels
            )
        )
        self.head = torch.nn.Conv2d(64, 1, kernel_size=1)
        self.sharpness = sharpness

    def lesion_map(self, batch: torch.Tensor) -> torch.Tensor:
        """Lesion logits ``(n, 1, s/8, s/8)``."""
        return self.head(self.features(batch))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        scores = self.lesion_map(batch).flatten(1) * self.sharpness
        count = torch.tensor(float(scores.shape[1]))
        pooled = (torch.logsumexp(scores, dim=1) - torch.log(count)) / self.sharpness
        return pooled[:, None]


def build_network() -> torch.nn.Module:
    """The classifier: :class:`LesionPoolingNet` (about 80 k parameters)."""
    return LesionPoolingNet()


def preprocess(rgb: np.ndarray) -> torch.Tensor:
    """An RGB photograph ``(rows, columns, 3)`` → network input ``(3, INPUT_SIZE, INPUT_SIZE)``.

    The image is padded to a square around its centre (black, like the area outside
    the field of view), resized with antialiasing, and each channel is divided by its
    mean inside the field of view, which removes the camera's gain and the
    patient's pigmentation from what the network sees.
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
    field = image.sum(0) > 0.08
    if int(field.sum()) < 0.05 * INPUT_SIZE**2:
        raise ValueError("no field of view found: the photograph is (nearly) black")
    means = image[:, field].mean(dim=1).clamp_min(1e-3)
    return (image / means[:, None, None] - 1.0) * field


def probabilities(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Probability of the finding for each image of a preprocessed batch ``(n, 3, s, s)``."""
    with torch.inference_mode():
        return torch.sigmoid(network(batch)[:, 0])
