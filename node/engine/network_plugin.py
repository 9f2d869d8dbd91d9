"""Configured network files (TorchScript here, ONNX in :mod:`node.engine.onnx_plugin`)
with a declared spacing, orientation, intensity window and labels.
"""

from __future__ import annotations

import torch

from node.config import OnnxModelSettings, TorchScriptModelSettings
from node.engine.declared import accepts_from, resources_from, validated_input
from node.engine.inference import IntensityWindow, ModelSpec
from node.engine.model_plugin import SegmentationModelPlugin


class NetworkModelPlugin(SegmentationModelPlugin):
    """A configured network file with a declared spacing, orientation, window and labels.

    Subclasses (TorchScript, ONNX) say how to open the file (:meth:`build`).
    """

    def __init__(
        self,
        name: str,
        settings: TorchScriptModelSettings | OnnxModelSettings,
        label_values: dict[int, int],
    ) -> None:
        super().__init__()
        self.name = name
        self.version = settings.version
        self.template = settings.template
        self.accepts = accepts_from(settings.accepts)
        self.resources = resources_from(settings.resources)
        self.path = settings.path
        self.spec = ModelSpec(
            spacing_mm=settings.spacing_mm,
            axcodes=settings.axcodes.upper(),
            window=IntensityWindow(**settings.window.model_dump()),
            labels=tuple(settings.labels),
            roi_size=settings.roi_size,
            overlap=settings.overlap,
            sw_batch_size=settings.sw_batch_size or 4,
        )
        self.label_values = label_values
        self.amp = settings.amp
        if settings.validated_on is not None:
            self.validated_on = validated_input(settings.validated_on)


class TorchScriptPlugin(NetworkModelPlugin):
    """A TorchScript network with a declared spacing, orientation, window and labels."""

    def build(self, device: torch.device) -> torch.nn.Module:
        network = torch.jit.load(str(self.path), map_location=device)
        return network.eval()
