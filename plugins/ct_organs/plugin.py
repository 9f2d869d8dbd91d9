"""The ``ct_organs`` plugin: the shipped demonstration UNet on the node's engine."""

from __future__ import annotations

import numpy as np
import torch

from node.contract.plugin import Accepts, Resources, ValidatedInput
from node.engine.model_plugin import SegmentationModelPlugin
from node.engine.postprocess import keep_largest_components
from node.engine.weights import load_network
from plugins.ct_organs.model import BODY, COMPONENTS, SPEC, WEIGHTS, build_network

# What the network was trained and tested on: make_abdomen_ct phantoms (train.py
# random_grid and HELD_OUT_GRIDS), measured with the gate's measure() (plugins/README.md).
#: Trained on 2-5 mm slices, held out 1.6-5 mm; the network works at 4 mm.
VALIDATED_SLICE_THICKNESS_MM = (1.5, 6.0)
#: Trained on 1.19-3.75 mm pixels (380-480 mm over 128-320 rows), held out 1.1-1.9 mm.
VALIDATED_PIXEL_SPACING_MM = (1.0, 4.0)
#: Noise drawn from 8-20 HU, measured 8.3-20.2 HU.
VALIDATED_NOISE_HU = (5.0, 30.0)


class CtOrgansPlugin(SegmentationModelPlugin):
    """Body, lungs, liver, spleen and kidneys on chest-abdomen CT.

    A demonstration model trained on synthetic phantoms
    (:mod:`tools.synthetic.abdomen_ct`); **not for clinical use**.
    """

    name = "ct_organs"
    version = "0.2.0"
    template = "ct_organs"
    accepts = Accepts(
        modalities=("CT",),
        min_slices=16,
        slice_spacing_mm=(0.5, 8.0),
        pixel_spacing_mm=(0.3, 4.0),
        min_matrix=64,
        planes=("axial",),
        max_obliquity_deg=15.0,
    )
    resources = Resources(needs_gpu=False, gpu_memory_mb=1500)
    validated_on = ValidatedInput(
        modalities=("CT",),
        sop_classes=("1.2.840.10008.5.1.4.1.1.2",),  # CT Image Storage, as the phantoms
        slice_thickness_mm=VALIDATED_SLICE_THICKNESS_MM,
        pixel_spacing_mm=VALIDATED_PIXEL_SPACING_MM,
        # The phantoms look portal-venous (enhanced liver, spleen, kidneys, aorta) but
        # carry no ContrastBolusAgent: the header cannot tell, so contrast is not checked.
        contrast="any",
        photometric_interpretations=("MONOCHROME2",),
        min_bits_stored=12,  # the phantoms are stored in 12 bits
        noise=VALIDATED_NOISE_HU,
    )
    spec = SPEC
    #: How a map is computed when one is asked for (``explain_label``; see
    #: ``ct_organs_explain``): the gradient of the organ score with respect to the input
    #: (MONAI ``VanillaGrad``). Grad-CAM is available (``explain_method = "Grad-CAM"``,
    #: layer below) but comes out inverted on this network: its PReLU activations are
    #: signed, against Grad-CAM's assumption (see the README).
    explain_method = "gradient saliency"
    explain_layer = "model.1.submodule.2"

    def postprocess(self, label_map: np.ndarray) -> np.ndarray:
        """One liver, one spleen, two lungs, two kidneys: stray pieces become body."""
        return keep_largest_components(label_map, COMPONENTS, fill=BODY)

    def build(self, device: torch.device) -> torch.nn.Module:
        return load_network(
            build_network, WEIGHTS, device, train_hint="tools/training/ct_organs.py"
        )
