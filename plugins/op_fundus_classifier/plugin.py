"""The ``op_fundus_classifier`` plugin: the shipped demonstration classifier on OP photographs."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from node.errors import PluginError
from node.runtime.plugin import (
    Accepts,
    Classification,
    InferencePlugin,
    Prediction,
    Resources,
    RunContext,
)
from node.runtime.volume import Volume
from node.runtime.weights import load_network
from plugins.op_fundus_classifier.model import (
    FINDING,
    WEIGHTS,
    build_network,
    preprocess,
    probabilities,
)

log = logging.getLogger(__name__)


class OpFundusClassifierPlugin(InferencePlugin):
    """Diabetic-retinopathy-like lesions present/absent, per colour fundus photograph.

    A demonstration model trained on synthetic photographs
    (:mod:`node.synthetic.fundus_pixels`); **not for clinical use**. Every frame of
    the series (each photograph, each frame of a multi-frame image) gets one
    :class:`~node.runtime.plugin.Classification` with its probability; the template
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

    def __init__(self) -> None:
        self._network: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    def load(self, device: torch.device) -> None:
        self._network = load_network(
            build_network,
            WEIGHTS,
            device,
            train_hint="python -m plugins.op_fundus_classifier.train",
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
