"""Routines for the Ray executor's tests (imported by the actors from this checkout)."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from node.contract.plugin import Accepts, InferencePlugin, Prediction, RunContext
from node.contract.volume import Volume


class BodyAbove0(InferencePlugin):
    """Labels voxels above 0 HU; records where it ran in the prediction's summary."""

    name = "ray_body"
    version = "1.0.0"
    template = "ct_lungs"
    accepts = Accepts(modalities=("CT",))
    #: Seconds ``run`` sleeps (a job long enough to watch it in flight).
    seconds = 0.0

    def load(self, device: torch.device) -> None:
        self.device = device
        self.loaded_in = os.getpid()

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        time.sleep(self.seconds)
        return Prediction(label_map=(volume.array > 0).astype(np.uint8))


class SlowBody(BodyAbove0):
    """The same, taking 1.5 s a job."""

    name = "ray_body_slow"
    seconds = 1.5
