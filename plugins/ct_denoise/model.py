"""The demonstration denoising network and how it runs on a volume (array logic only).

A tiny 2-D residual MONAI UNet sees one axial slice at a time, in HU scaled by
:data:`HU_SCALE`, and predicts the noise, which is subtracted: ``clean = x - net(x)``.
Slices are padded (reflect) to a multiple of :data:`DIVISOR` and cropped back, so
the output has exactly the source grid.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

#: HU are divided by this before the network (and multiplied back after).
HU_SCALE = 1000.0
#: Spatial size the UNet's two stride-2 levels need.
DIVISOR = 4
#: Shipped weights (``state_dict`` of :func:`build_network`), written by ``train.py``.
WEIGHTS = Path(__file__).resolve().parent / "weights" / "ct_denoise_unet2d.pt"


class ResidualDenoiser(torch.nn.Module):
    """``x - g * UNet(x)``: the UNet estimates the noise of a ``(B, 1, H, W)`` slice batch."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=(16, 32, 64),
            strides=(2, 2),
            num_res_units=1,
            norm="instance",
        )
        # Starts as the identity: the noise estimate is scaled by a gain that begins at 0.
        self.gain = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = x - self.gain * self.noise(x)
        return result


def build_network() -> ResidualDenoiser:
    """The untrained network (about 0.1 M parameters)."""
    return ResidualDenoiser()


def denoise_volume(
    network: torch.nn.Module,
    hu: np.ndarray,
    device: torch.device,
    *,
    batch: int = 8,
    should_stop: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """Denoise a ``(slices, rows, columns)`` HU volume slice by slice; float32 HU out."""
    if hu.ndim != 3:
        raise ValueError(f"expected a (slices, rows, columns) volume, got shape {hu.shape}")
    _, rows, columns = hu.shape
    pad_rows, pad_columns = (-rows) % DIVISOR, (-columns) % DIVISOR
    out = np.empty(hu.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, hu.shape[0], batch):
            should_stop()
            stop = min(hu.shape[0], start + batch)
            x = torch.from_numpy(np.ascontiguousarray(hu[start:stop], dtype=np.float32))
            x = (x / HU_SCALE)[:, None].to(device)
            if pad_rows or pad_columns:
                x = F.pad(x, (0, pad_columns, 0, pad_rows), mode="reflect")
            y = network(x)[:, 0, :rows, :columns] * HU_SCALE
            out[start:stop] = y.float().cpu().numpy()
    return out
