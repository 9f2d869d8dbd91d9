"""The ``ct_denoise`` plugin: an image-to-image routine that returns a denoised copy."""

from __future__ import annotations

import logging
import time

import torch

from node.errors import PluginError
from node.runtime.plugin import (
    Accepts,
    DerivedImage,
    InferencePlugin,
    Prediction,
    Resources,
    RunContext,
)
from node.runtime.volume import Volume
from node.runtime.weights import load_network
from plugins.ct_denoise.model import WEIGHTS, build_network, denoise_volume

log = logging.getLogger(__name__)


class CtDenoisePlugin(InferencePlugin):
    """Removes white noise from axial CT slices; the result is a derived CT series.

    A demonstration model trained on synthetic phantoms (``train.py``); **not for
    clinical use**.
    """

    name = "ct_denoise"
    version = "0.1.0"
    template = "ct_denoise"
    accepts = Accepts(
        modalities=("CT",),
        min_slices=1,
        pixel_spacing_mm=(0.3, 5.0),
        min_matrix=32,
        planes=("axial",),
    )
    resources = Resources(needs_gpu=False, gpu_memory_mb=300)

    def __init__(self) -> None:
        self._network: torch.nn.Module | None = None

    def load(self, device: torch.device) -> None:
        self._network = load_network(
            build_network, WEIGHTS, device, train_hint="plugins/ct_denoise/train.py"
        )

    def unload(self) -> None:
        self._network = None

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        if self._network is None:
            raise PluginError(f"plugin {self.name!r} is not loaded")
        started = time.perf_counter()
        values = denoise_volume(
            self._network, volume.array, context.device, should_stop=context.raise_if_expired
        )
        log.info(
            "denoised plugin=%s job=%d slices=%d seconds=%.2f",
            self.name,
            context.job_id,
            volume.shape[0],
            time.perf_counter() - started,
        )
        return Prediction(
            derived_image=DerivedImage(
                values,
                f"Denoised by {self.name} {self.version} (2-D residual UNet, demonstration "
                "model trained on synthetic phantoms, not for clinical use)",
            )
        )
