"""The ``mg_mass_detector`` plugin: the shipped demonstration mass detector on mammograms."""

from __future__ import annotations

import logging
import time

import torch

from node.contract.plugin import (
    Accepts,
    Detection,
    InferencePlugin,
    Prediction,
    Resources,
    RunContext,
    ValidatedInput,
)
from node.contract.volume import Volume
from node.engine.weights import load_network
from node.errors import InputRejected, PluginError
from plugins.mg_mass_detector.model import (
    FINDING,
    MAX_DETECTIONS,
    SCORE_THRESHOLD,
    WEIGHTS,
    build_network,
    decode,
    preprocess,
)

log = logging.getLogger(__name__)

# What the network was trained and tested on (train.py): make_mammogram_pixels images as
# make_mammogram writes them, measured with the gate's measure() (plugins/README.md).
#: Trained on 0.4, 0.5 and 0.6 mm pixels (ImagerPixelSpacing, as the generator writes).
VALIDATED_PIXEL_SPACING_MM = (0.3, 0.8)
#: At most 1.6e-4 of a view's pixels sit at its maximum over 60 training images: 12x that.
VALIDATED_MAX_CLIPPED_FRACTION = 0.002


class MgMassDetectorPlugin(InferencePlugin):
    """Boxes around suspected masses on For Presentation mammograms (CC and MLO).

    A demonstration model trained on synthetic mammograms
    (:mod:`tools.synthetic.mammogram_pixels`); **not for clinical use**. Each view is
    one frame; every detection scoring at least the operating threshold (at most
    five per view) becomes a :class:`~node.contract.plugin.Detection` with its box
    in the view's SCOORD image coordinates.
    """

    name = "mg_mass_detector"
    version = "0.1.0"
    template = "mg_mass_detector"
    accepts = Accepts(
        modalities=("MG",),
        sop_classes=("DigitalMammographyXRayImageStorageForPresentation",),
        photometric_interpretations=("MONOCHROME1", "MONOCHROME2"),
        samples_per_pixel=(1,),
        lateralities=("L", "R"),
        views=("CC", "MLO"),
        pixel_spacing_mm=(0.04, 1.0),
        min_matrix=128,
        max_slices=16,
    )
    resources = Resources(needs_gpu=False, gpu_memory_mb=300)
    validated_on = ValidatedInput(
        modalities=("MG",),
        sop_classes=("1.2.840.10008.5.1.4.1.1.1.2",),  # Digital Mammography For Presentation
        pixel_spacing_mm=VALIDATED_PIXEL_SPACING_MM,
        # Trained on MONOCHROME2 only (MONOCHROME1 is inverted by the node, but untested).
        photometric_interpretations=("MONOCHROME2",),
        min_bits_stored=12,  # the training images are 12-bit
        max_clipped_fraction=VALIDATED_MAX_CLIPPED_FRACTION,
    )
    threshold = SCORE_THRESHOLD

    def __init__(self) -> None:
        self._network: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    def load(self, device: torch.device) -> None:
        self._network = load_network(
            build_network, WEIGHTS, device, train_hint="python -m tools.training.mg_mass_detector"
        )
        self.device = device

    def unload(self) -> None:
        self._network = None

    def check(self, volume: Volume) -> None:
        if not volume.pixel_spacing_attribute:
            raise InputRejected("the mammograms give neither PixelSpacing nor ImagerPixelSpacing")

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        if self._network is None:
            raise PluginError(f"plugin {self.name!r} is not loaded")
        started = time.perf_counter()
        spacing = (float(volume.spacing[1]), float(volume.spacing[2]))
        detections = []
        for frame, laterality in enumerate(volume.lateralities):
            context.raise_if_expired()
            model_input = preprocess(volume.array[frame], spacing, laterality)
            with torch.inference_mode():
                output = self._network(model_input.image[None].to(context.device))[0].cpu()
            for score, box in decode(output, model_input, self.threshold, MAX_DETECTIONS):
                detections.append(Detection(FINDING, score, frame=frame, box=box))
        log.info(
            "detected plugin=%s job=%d frames=%d detections=%d seconds=%.2f",
            self.name,
            context.job_id,
            volume.shape[0],
            len(detections),
            time.perf_counter() - started,
        )
        return Prediction(detections=detections)
