"""Running a routine on one case the way the job worker does.

The same steps as :meth:`node.orchestration.worker.InferenceWorker._process`, without the
queue and the result objects: the plugin comes loaded from the node's
:class:`~node.orchestration.registry.PluginRegistry`; a plugin that needs a GPU is refused
on the CPU; the images are read and assembled by the worker's loader
(:func:`~node.contract.assemble.load_volume`) into a :class:`~node.contract.volume.Volume`
(through the input-quality gate, :func:`~node.orchestration.gate.gate_series`, when the
routine declares ``validated_on``; the policy is the one of the rule named with
``--rule``, else warn on every failed check); the plugin's declared ``Accepts`` and
``check()`` run (:func:`check_input`) before ``run()``. A case the routine or the gate
refuses is *rejected* (with the reason, as a job would show it); one that raises
anything else is *failed*. Neither is dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from node.config import QualitySettings
from node.contract.assemble import load_volume
from node.contract.plugin import InferencePlugin, Prediction, RunContext, check_input
from node.contract.volume import Volume
from node.errors import InputRejected, PluginError, VolumeError
from node.orchestration.gate import gate_series
from node.orchestration.registry import PluginRegistry

log = logging.getLogger(__name__)

#: Rule name recorded in the run context of evaluation runs.
EVALUATION_RULE = "evaluate"


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case: ``ok`` (with volume and prediction), ``rejected``, ``failed``."""

    status: str
    reason: str | None
    volume: Volume | None
    prediction: Prediction | None
    seconds: float
    quality: dict[str, Any] | None = None


class CaseRunner:
    """One loaded plugin on one device, run case after case."""

    def __init__(
        self,
        registry: PluginRegistry,
        name: str,
        device: torch.device,
        quality: QualitySettings | None = None,
    ) -> None:
        info = registry.plugin_info(name)
        if info.resources.needs_gpu and device.type != "cuda":
            raise PluginError(f"plugin {name!r} needs a GPU; evaluation runs on {device}")
        self.device = device
        if device.type == "cuda":
            torch.cuda.set_device(device)  # as the worker does for its thread
        self.plugin: InferencePlugin = registry.get(name, device)
        self.quality = quality or QualitySettings()

    def _volume(self, paths: Sequence[Path]) -> tuple[Volume, dict[str, Any] | None]:
        validated = self.plugin.validated_on
        if validated is None:
            return load_volume(paths), None
        gated = gate_series(lambda: load_volume(paths), paths, validated, self.quality)
        return gated.volume, {
            "decision": gated.decision.action,
            "warnings": list(gated.decision.warnings),
            "ignored": list(gated.decision.ignored),
        }

    def run(self, paths: Sequence[Path], job_id: int) -> CaseOutcome:
        """Load the case's images (the worker's loader) and run the routine on them."""
        started = time.perf_counter()
        try:
            volume, quality = self._volume(paths)
        except VolumeError as exc:
            return CaseOutcome(
                "failed", f"VolumeError: {exc}", None, None, time.perf_counter() - started
            )
        except InputRejected as exc:  # the quality gate decided to skip
            return CaseOutcome("rejected", str(exc), None, None, time.perf_counter() - started)
        try:
            check_input(self.plugin, volume)
            context = RunContext(job_id, EVALUATION_RULE, self.device)
            prediction = self.plugin.run(volume, context)
        except InputRejected as exc:
            log.info("evaluation case rejected case=%d reason=%s", job_id, exc)
            return CaseOutcome(
                "rejected", str(exc), volume, None, time.perf_counter() - started, quality
            )
        except Exception as exc:
            log.warning("evaluation case failed case=%d reason=%s", job_id, exc)
            return CaseOutcome(
                "failed",
                f"{type(exc).__name__}: {exc}",
                volume,
                None,
                time.perf_counter() - started,
            )
        return CaseOutcome("ok", None, volume, prediction, time.perf_counter() - started, quality)
