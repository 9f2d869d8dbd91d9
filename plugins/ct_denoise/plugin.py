"""The ``ct_denoise`` plugin: an image-to-image routine that returns a denoised copy."""

from __future__ import annotations

import logging
import time

import torch

from node.contract.plugin import (
    Accepts,
    DerivedImage,
    InferencePlugin,
    Prediction,
    Resources,
    RunContext,
    ValidatedInput,
)
from node.contract.volume import Volume
from node.engine.weights import load_network
from node.errors import PluginError
from plugins.ct_denoise.model import WEIGHTS, build_network, denoise_volume

log = logging.getLogger(__name__)

# What the network was trained and tested on (train.py): noise-free make_abdomen_ct and
# make_chest_ct slices with white noise added, measured with the gate's measure()
# (plugins/README.md).
#: Trained on 2.4-5 mm pixels (380-480 mm over 96-160 rows), held out 1.6-2.2 mm.
VALIDATED_PIXEL_SPACING_MM = (1.5, 5.5)
#: Trained on 5-30 HU of added noise, measured 5.6-30.2 HU (held out at 10 and 20 HU).
VALIDATED_NOISE_HU = (4.0, 40.0)


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
    # No slice thickness: the network works on each axial slice alone (trained on
    # 12.5-17 mm slices of thin phantoms, where thickness changes nothing in-plane).
    validated_on = ValidatedInput(
        modalities=("CT",),
        sop_classes=("1.2.840.10008.5.1.4.1.1.2",),  # CT Image Storage, as the phantoms
        pixel_spacing_mm=VALIDATED_PIXEL_SPACING_MM,
        contrast="any",  # abdomen phantoms look enhanced, chest ones not; no header says
        photometric_interpretations=("MONOCHROME2",),
        min_bits_stored=12,  # the phantoms are stored in 12 bits
        noise=VALIDATED_NOISE_HU,
    )

    def __init__(self) -> None:
        self._network: torch.nn.Module | None = None

    def load(self, device: torch.device) -> None:
        self._network = load_network(
            build_network, WEIGHTS, device, train_hint="tools/training/ct_denoise.py"
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
