"""Running a routine on one case the way the job worker does: through the same
:func:`~node.orchestration.execute.execute`.

Each case becomes a :class:`~node.orchestration.job.JobInput` without a result plan
(nothing is built or written): the plugin comes loaded from the node's
:class:`~node.orchestration.registry.PluginRegistry`; a plugin that needs a GPU is refused
on the CPU; the images are read and assembled by the worker's loader into a
:class:`~node.contract.volume.Volume` (through the input-quality gate when the routine
declares ``validated_on``; the policy is the one of the rule named with ``--rule``,
else warn on every failed check); the routine's declared ``Accepts`` and ``check()`` run
before ``run()``. A case the routine or the gate refuses is *rejected* (with the reason,
as a job shows it); one that raises anything else is *failed*. Neither is dropped
silently.
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
from node.contract.plugin import InferencePlugin, Prediction
from node.contract.volume import Volume
from node.errors import PluginError
from node.orchestration.execute import execute
from node.orchestration.job import DONE, JobInput
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
        self.registry = registry
        self.name = name
        self.device = device
        if device.type == "cuda":
            torch.cuda.set_device(device)  # as the worker does for its thread
        self.plugin: InferencePlugin = registry.get(name, device)
        self.quality = quality or QualitySettings()

    def run(self, paths: Sequence[Path], job_id: int) -> CaseOutcome:
        """Run the routine on the case's images as job ``job_id`` would run."""
        started = time.perf_counter()
        ran: list[tuple[Volume, Prediction]] = []
        job = JobInput(
            job_id=job_id,
            rule=EVALUATION_RULE,
            plugin=self.name,
            plugin_version=self.plugin.version,
            device=str(self.device),
            template=self.plugin.template,
            templates_dir=None,
            study_uid="",
            series_uid="",
            instance_paths=tuple(paths),
            quality=self.quality,
        )
        output = execute(job, self.registry, inspect=lambda v, p: ran.append((v, p)))
        seconds = time.perf_counter() - started
        quality = None
        if output.quality is not None:
            quality = {key: output.quality[key] for key in ("decision", "warnings", "ignored")}
        if output.outcome == DONE:
            volume, prediction = ran[0]
            return CaseOutcome("ok", None, volume, prediction, seconds, quality)
        if output.input_rejected:
            log.info("evaluation case rejected case=%d reason=%s", job_id, output.message)
            return CaseOutcome("rejected", output.message, None, None, seconds, quality)
        log.warning("evaluation case failed case=%d reason=%s", job_id, output.message)
        return CaseOutcome("failed", output.reason, None, None, seconds)
