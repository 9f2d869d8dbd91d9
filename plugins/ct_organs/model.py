"""The demonstration network and what it expects (shared by the plugin and ``train.py``)."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import UNet

from node.engine.inference import IntensityWindow, ModelSpec

#: Output channels; channel ``i`` is label value ``i`` of the ``ct_organs`` template.
LABELS = ("background", "body", "lungs", "liver", "spleen", "kidneys")

SPEC = ModelSpec(
    spacing_mm=(4.0, 4.0, 4.0),
    axcodes="RAS",
    window=IntensityWindow(a_min=-1000.0, a_max=400.0, b_min=0.0, b_max=1.0, clip=True),
    labels=LABELS,
    roi_size=(96, 96, 96),
    overlap=0.25,
    sw_batch_size=2,
)

#: Connected parts of each organ label; smaller extra components become body (label 1).
COMPONENTS = {2: 2, 3: 1, 4: 1, 5: 2}
BODY = 1

#: Shipped weights (``state_dict`` of :func:`build_network`), written by ``train.py``.
WEIGHTS = Path(__file__).resolve().parent / "weights" / "ct_organs_unet.pt"


def build_network() -> torch.nn.Module:
    """A 3-level MONAI UNet, ~0.5 M parameters."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=len(LABELS),
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=0,
        norm="batch",
    )
