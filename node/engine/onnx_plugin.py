"""ONNX segmentation networks run with onnxruntime, configured like TorchScript ones.

An ONNX file (exported from PyTorch with ``torch.onnx.export``, or from
TensorFlow/Keras with ``tf2onnx``) with one ``(batch, channel, x, y, z)`` input and
a ``(batch, labels, x, y, z)`` logits output runs through the node's engine
(:func:`node.engine.inference.segment`): the same reorientation, intensity window,
resampling, sliding windows and labels back on the source grid as a TorchScript
model. Only the network call differs: :class:`OnnxNetwork` hands each window
batch to an ``onnxruntime.InferenceSession``.

Execution provider: ``CUDAExecutionProvider`` (on the worker's GPU) when the
worker runs on CUDA and the installed onnxruntime has it (the ``onnxruntime-gpu``
wheel), else ``CPUExecutionProvider``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.config import OnnxModelSettings
from node.engine.network_plugin import NetworkModelPlugin
from node.errors import PluginError

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

Provider = str | tuple[str, dict[str, Any]]


def execution_providers(device: torch.device, available: Sequence[str]) -> list[Provider]:
    """onnxruntime providers for a worker on ``device``, most preferred first."""
    if device.type == "cuda" and CUDA_PROVIDER in available:
        index = device.index if device.index is not None else torch.cuda.current_device()
        return [(CUDA_PROVIDER, {"device_id": int(index)}), CPU_PROVIDER]
    return [CPU_PROVIDER]


def open_session(path: Path, device: torch.device) -> Any:
    """An ``InferenceSession`` for ``path`` on the best provider for ``device``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if device.type == "cpu":
        options.intra_op_num_threads = torch.get_num_threads()
    providers = execution_providers(device, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise PluginError(f"{path}: onnxruntime cannot load the model: {exc}") from exc
    if device.type == "cuda" and CUDA_PROVIDER not in session.get_providers():
        log.warning(
            "onnxruntime has no CUDA provider here; the model runs on the CPU path=%s", path.name
        )
    return session


def _io_names(session: Any, input_name: str | None, output_name: str | None) -> tuple[str, str]:
    """The graph input and output to use, checked against the graph."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if input_name is None:
        if len(inputs) != 1:
            raise PluginError(
                f"the model has {len(inputs)} inputs ({', '.join(inputs)}); name one with"
                " input_name"
            )
        input_name = next(iter(inputs))
    elif input_name not in inputs:
        raise PluginError(f"input_name {input_name!r} is not an input of the model")
    if output_name is None:
        output_name = session.get_outputs()[0].name
    elif output_name not in outputs:
        raise PluginError(f"output_name {output_name!r} is not an output of the model")
    assert output_name is not None
    for name, node, kind in (
        (input_name, inputs.get(input_name), "input"),
        (output_name, outputs.get(output_name), "output"),
    ):
        shape = getattr(node, "shape", None)
        if shape is not None and len(shape) != 5:
            raise PluginError(
                f"{kind} {name!r} has shape {shape}; a 3D segmentation network takes and"
                " gives (batch, channel, x, y, z)"
            )
    return input_name, output_name


def check_model(settings: OnnxModelSettings) -> tuple[str, str]:
    """Open the file on the CPU and check its input/output and channel count."""
    if not settings.path.is_file():
        raise PluginError(f"{settings.path}: ONNX file not found")
    session = open_session(settings.path, torch.device("cpu"))
    names = _io_names(session, settings.input_name, settings.output_name)
    output = next(o for o in session.get_outputs() if o.name == names[1])
    channels = output.shape[1]
    if isinstance(channels, int) and channels != len(settings.labels):
        raise PluginError(
            f"the model gives {channels} output channels but {len(settings.labels)} labels"
            " are declared"
        )
    return names


class OnnxNetwork(torch.nn.Module):
    """Calls an onnxruntime session like a network: float32 tensors in and out."""

    def __init__(self, session: Any, input_name: str, output_name: str) -> None:
        super().__init__()
        self.session = session
        self.input_name = input_name
        self.output_name = output_name

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(windows.detach().to(torch.float32).cpu().numpy())
        (logits,) = self.session.run([self.output_name], {self.input_name: batch})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(windows.device)


class OnnxPlugin(NetworkModelPlugin):
    """An ONNX network with a declared spacing, orientation, window and labels."""

    def __init__(
        self,
        name: str,
        settings: OnnxModelSettings,
        label_values: dict[int, int],
        io_names: tuple[str, str],
    ) -> None:
        super().__init__(name, settings, label_values)
        self.io_names = io_names
        # The session computes in float32 whatever torch's autocast says.
        self.amp = False

    def build(self, device: torch.device) -> torch.nn.Module:
        session = open_session(self.path, device)
        log.info(
            "onnx session plugin=%s device=%s providers=%s",
            self.name,
            device,
            ",".join(session.get_providers()),
        )
        return OnnxNetwork(session, *self.io_names)


__all__ = ["OnnxNetwork", "OnnxPlugin", "check_model", "execution_providers", "open_session"]
