"""The contract between the node and an inference routine.

A plugin never touches the network or the database: it receives a
:class:`~node.runtime.volume.Volume` and returns a :class:`Prediction`.
Models are loaded once per worker by :meth:`InferencePlugin.load`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from node.runtime.volume import Volume


@dataclass(frozen=True)
class RunContext:
    """What a plugin may know about the job it runs for (no PHI)."""

    job_id: int
    rule: str
    device: torch.device


@dataclass
class Prediction:
    """A routine's output on the source grid.

    Attributes
    ----------
    label_map
        Integer array shaped like ``volume.array``; 0 is background, other
        values are the template's label values.
    measurements
        ``{label value: {measurement key: value}}``; keys are the ones the
        template declares (e.g. ``volume_cm3``, ``mean_hu``).
    findings
        Free-form qualitative findings ``{label value: {finding key: code key}}``.
    probabilities
        Optional ``float32`` array ``(labels, slices, rows, columns)``.
    """

    label_map: np.ndarray
    measurements: dict[int, dict[str, float]] = field(default_factory=dict)
    findings: dict[int, dict[str, str]] = field(default_factory=dict)
    probabilities: np.ndarray | None = None


class InferencePlugin(abc.ABC):
    """Base class of every inference routine.

    Subclasses set :attr:`name`, :attr:`version` and :attr:`template` and
    implement :meth:`check` and :meth:`run`; :meth:`load` is called once per
    worker before the first job.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    #: File name (stem) of the result template in ``dicom_sr_templates/``.
    template: ClassVar[str]
    #: Modalities the routine accepts.
    modalities: ClassVar[tuple[str, ...]] = ()

    def load(self, device: torch.device) -> None:  # noqa: B027 - optional hook
        """Load weights or warm up on ``device``; called once per worker."""

    @abc.abstractmethod
    def check(self, volume: Volume) -> None:
        """Raise :class:`~node.errors.InputRejected` with a reason if the input is unsuitable."""

    @abc.abstractmethod
    def run(self, volume: Volume, context: RunContext) -> Prediction:
        """Run inference and return a prediction on the source grid."""
