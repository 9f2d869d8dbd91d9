"""A plugin made of a segmentation network and a :class:`~node.engine.inference.ModelSpec`.

Subclasses only say how to build the network on a device (:meth:`build`);
running it (reorientation, windowing, resampling, sliding windows, AMP, OOM
fallbacks, labels back on the source grid) is :func:`node.engine.inference.segment`.
Measurements are each label's volume and mean attenuation.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Iterable
from typing import Generic, TypeVar

import numpy as np
import torch

from node.contract.plugin import Attribution, InferencePlugin, Prediction, RunContext
from node.contract.volume import Volume
from node.engine.attribution import Method, segment_attribution
from node.engine.inference import ExecutionOptions, ModelSpec, segment
from node.engine.measure import label_statistics
from node.errors import InputRejected, PluginError

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT")


def label_measurements(
    name: str, volume: Volume, label_map: np.ndarray, labels: Iterable[int]
) -> dict[int, dict[str, float]]:
    """Volume (cm3) and mean attenuation of each label that has voxels.

    Raises
    ------
    InputRejected
        No label has a voxel (the plugin ``name`` segmented nothing).
    """
    statistics = label_statistics(volume, label_map, labels)
    measurements = {
        label: {"volume_cm3": stats["volume_cm3"], "mean_hu": stats["mean"]}
        for label, stats in statistics.items()
        if stats["voxel_count"] > 0
    }
    if not measurements:
        raise InputRejected(f"{name}: nothing segmented")
    return measurements


class DeviceModelPlugin(InferencePlugin, Generic[ModelT]):
    """A plugin that holds its model on one device from :meth:`load` to :meth:`unload`.

    Subclasses say how to put the model on a device (:meth:`_place`) and what to log
    once it is there (:meth:`_log_loaded`); :meth:`_loaded` hands it to :meth:`run`.
    """

    def __init__(self) -> None:
        self._model: ModelT | None = None
        self.device = torch.device("cpu")

    @abc.abstractmethod
    def _place(self, device: torch.device) -> ModelT:
        """The model, ready to run on ``device``."""

    @abc.abstractmethod
    def _log_loaded(self, device: torch.device, seconds: float) -> None:
        """Log that the model is on ``device`` after ``seconds``."""

    def load(self, device: torch.device) -> None:
        started = time.perf_counter()
        self._model = self._place(device)
        self.device = device
        self._log_loaded(device, time.perf_counter() - started)

    def unload(self) -> None:
        self._model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _loaded(self) -> ModelT:
        if self._model is None:
            raise PluginError(f"plugin {self.name!r} is not loaded")
        return self._model


class SegmentationModelPlugin(DeviceModelPlugin[torch.nn.Module]):
    """Runs a network described by :attr:`spec` through the node's engine.

    Attributes
    ----------
    spec
        Input spacing/orientation/window, output labels, sliding-window settings.
    label_values
        Output channel → template label value (default: the channel index).
    amp
        Mixed precision on CUDA.
    sw_batch_size
        Window batch override (``None``: the spec's).
    explain_label
        Output channel to explain with a Grad-CAM map (``Prediction.attribution``);
        ``None`` (default): no map, it costs a forward and backward pass of the whole
        model grid.
    explain_layer
        Layer whose activations Grad-CAM weights (a name from ``named_modules()``).
    explain_method
        ``"Grad-CAM"`` or ``"Grad-CAM++"``.
    last_stages
        Seconds per step of the latest :meth:`run` (the engine's stages, then
        ``postprocess`` and ``measure``); for benchmarks and logs.
    """

    spec: ModelSpec
    label_values: dict[int, int] | None = None
    amp: bool = True
    sw_batch_size: int | None = None
    explain_label: int | None = None
    explain_layer: str = ""
    explain_method: Method = "Grad-CAM"
    last_stages: dict[str, float] = {}

    @abc.abstractmethod
    def build(self, device: torch.device) -> torch.nn.Module:
        """The network with its weights, on ``device``, in eval mode."""

    def _place(self, device: torch.device) -> torch.nn.Module:
        return self.build(device)

    def _log_loaded(self, device: torch.device, seconds: float) -> None:
        log.info("model loaded plugin=%s device=%s seconds=%.2f", self.name, device, seconds)

    @property
    def network(self) -> torch.nn.Module:
        return self._loaded()

    def postprocess(self, label_map: np.ndarray) -> np.ndarray:
        """Clean the label map (template label values, source grid); default: unchanged."""
        return label_map

    def channel_to_label(self) -> np.ndarray:
        """Lookup table from output channel to template label value."""
        table = np.arange(len(self.spec.labels), dtype=np.uint16)
        for channel, value in (self.label_values or {}).items():
            table[channel] = value
        return table

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        started = time.perf_counter()
        options = ExecutionOptions(
            amp=self.amp, sw_batch_size=self.sw_batch_size, should_stop=context.raise_if_expired
        )
        result = segment(
            self.network,
            volume.array,
            volume.affine,
            volume.spacing,
            self.spec,
            context.device,
            options,
            to_device=self.build,
        )
        stages = dict(result.stages)
        mark = time.perf_counter()
        table = self.channel_to_label()
        dtype = np.uint8 if table.max() <= 255 else np.uint16
        label_map = self.postprocess(table.astype(dtype)[result.labels])
        stages["postprocess"] = time.perf_counter() - mark
        mark = time.perf_counter()
        values = [int(v) for v in table[1:]]
        measurements = label_measurements(self.name, volume, label_map, values)
        stages["measure"] = time.perf_counter() - mark
        self.last_stages = stages
        log.info(
            "segmented plugin=%s job=%d series=%s device=%s sw_batch_size=%d attempts=%s "
            "seconds=%.2f stages=%s labels=%s",
            self.name,
            context.job_id,
            volume.series_instance_uid,
            result.device,
            result.sw_batch_size,
            ",".join(result.attempts),
            time.perf_counter() - started,
            ",".join(f"{name}:{seconds:.2f}" for name, seconds in stages.items()),
            ",".join(str(v) for v in sorted(measurements)),
        )
        prediction = Prediction(label_map=label_map, measurements=measurements)
        if self.explain_label is not None:
            prediction.attribution = self.explain(volume, context)
        return prediction

    def explain(self, volume: Volume, context: RunContext) -> Attribution:
        """Grad-CAM of :attr:`explain_label` on the source grid."""
        if self.explain_label is None or not self.explain_layer:
            raise PluginError(f"plugin {self.name!r} names no label and layer to explain")
        context.raise_if_expired()
        started = time.perf_counter()
        values = segment_attribution(
            self.network,
            volume.array,
            volume.affine,
            volume.spacing,
            self.spec,
            context.device,
            channel=self.explain_label,
            layer=self.explain_layer,
            method=self.explain_method,
        )
        label_value = int(self.channel_to_label()[self.explain_label])
        log.info(
            "attribution computed plugin=%s job=%d method=%s channel=%d seconds=%.2f",
            self.name,
            context.job_id,
            self.explain_method,
            self.explain_label,
            time.perf_counter() - started,
        )
        return Attribution(
            values,
            method=self.explain_method,
            target=self.spec.labels[self.explain_label].capitalize(),
            label_value=label_value,
        )
