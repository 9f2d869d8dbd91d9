"""The ``op_fundus_classifier`` plugin: the shipped demonstration classifier on OP photographs."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from node.contract.plugin import (
    Accepts,
    Classification,
    InferencePlugin,
    Prediction,
    Resources,
    RunContext,
    ValidatedInput,
)
from node.contract.volume import Volume
from node.engine.weights import load_network
from node.errors import PluginError
from plugins.op_fundus_classifier.model import (
    FINDING,
    WEIGHTS,
    build_network,
    preprocess,
    probabilities,
)

log = logging.getLogger(__name__)

#: Up to 3.3e-2 of a training photograph's samples are saturated (255: the optic disc),
#: over 60 images each at 384 and 512 pixels: 3x that.
VALIDATED_MAX_CLIPPED_FRACTION = 0.1


class OpFundusClassifierPlugin(InferencePlugin):
    """Diabetic-retinopathy-like lesions present/absent, per colour fundus photograph.

    A demonstration model trained on synthetic photographs
    (:mod:`tools.synthetic.fundus_pixels`); **not for clinical use**. Every frame of
    the series (each photograph, each frame of a multi-frame image) gets one
    :class:`~node.contract.plugin.Classification` with its probability; the template
    holds the operating threshold.
    """

    name = "op_fundus_classifier"
    version = "0.1.0"
    template = "op_fundus_classifier"
    accepts = Accepts(
        modalities=("OP",),
        sop_classes=("OphthalmicPhotography8BitImageStorage",),
        photometric_interpretations=("RGB", "YBR_FULL", "YBR_FULL_422"),
        samples_per_pixel=(3,),
        lateralities=("L", "R"),
        min_matrix=128,
        max_slices=64,
    )
    resources = Resources(needs_gpu=False, gpu_memory_mb=200)
    # No pixel spacing: every photograph is resized to the network's 384 x 384 input.
    validated_on = ValidatedInput(
        modalities=("OP",),
        sop_classes=("1.2.840.10008.5.1.4.1.1.77.1.5.1",),  # Ophthalmic Photography 8 Bit
        # Trained on uncompressed RGB only (YBR, e.g. JPEG, is converted but untested).
        photometric_interpretations=("RGB",),
        min_bits_stored=8,
        max_clipped_fraction=VALIDATED_MAX_CLIPPED_FRACTION,
    )

    def __init__(self) -> None:
        self._network: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    def load(self, device: torch.device) -> None:
        self._network = load_network(
            build_network,
            WEIGHTS,
            device,
            train_hint="python -m tools.training.op_fundus_classifier",
        )
        self.device = device

    def unload(self) -> None:
        self._network = None

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        if self._network is None:
            raise PluginError(f"plugin {self.name!r} is not loaded")
        started = time.perf_counter()
        classifications = []
        for frame in range(volume.shape[0]):
            context.raise_if_expired()
            rgb = np.clip(np.rint(volume.array[frame]), 0, 255).astype(np.uint8)
            batch = preprocess(rgb)[None].to(context.device)
            probability = float(probabilities(self._network, batch)[0])
            classifications.append(Classification(FINDING, probability, frame=frame))
        log.info(
            "classified plugin=%s job=%d frames=%d seconds=%.2f",
            self.name,
            context.job_id,
            len(classifications),
            time.perf_counter() - started,
        )
        return Prediction(classifications=classifications)
