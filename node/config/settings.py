"""The whole configuration: every section, and the checks across sections."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from node.config.base import _KeyedError, _Strict
from node.config.completion import CompletionSettings
from node.config.destinations import AnyDestination
from node.config.dicomweb import DicomWebSettings
from node.config.executor import ExecutorSettings
from node.config.logs import LoggingSettings
from node.config.models import ModelSettings
from node.config.network import NodeSettings
from node.config.retention import RetentionSettings
from node.config.rules import RuleSettings
from node.config.security import SecuritySettings
from node.config.sources import AnySource
from node.config.workers import WorkerSettings


class Settings(_Strict):
    """The whole configuration."""

    node: NodeSettings = NodeSettings()
    completion: CompletionSettings = CompletionSettings()
    retention: RetentionSettings = RetentionSettings()
    destinations: dict[str, AnyDestination] = Field(default_factory=dict)
    rules: list[RuleSettings] = Field(default_factory=list)
    #: PACS the node can query and pull from (``POST /api/pull``, count check).
    sources: dict[str, AnySource] = Field(default_factory=dict)
    dicomweb: DicomWebSettings = DicomWebSettings()
    #: Named model instances (configuration only, no code); rules use the name as ``plugin``.
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    workers: WorkerSettings = WorkerSettings()
    #: Where inference runs: in the node, or on a Ray cluster (README "Scaling out").
    executor: ExecutorSettings = ExecutorSettings()
    security: SecuritySettings = SecuritySettings()
    logging: LoggingSettings = LoggingSettings()
    #: The site's result templates, looked up before the shipped ``dicom_sr_templates``.
    templates_dir: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_destinations(cls, data: Any) -> Any:
        """``node.accept: destinations``: allow the C-STORE destinations' AE from their host."""
        node = data.get("node") if isinstance(data, dict) else None
        if not isinstance(node, dict) or node.get("accept") != "destinations":
            return data
        entries = []
        for name, dest in (data.get("destinations") or {}).items():
            if not isinstance(dest, dict) or dest.get("kind", "dimse") != "dimse":
                continue
            try:
                hosts = sorted({info[4][0] for info in socket.getaddrinfo(dest["host"], None)})
            except (KeyError, OSError) as exc:
                raise _KeyedError(
                    ("destinations", name, "host"), f"cannot resolve for node.accept: {exc}"
                ) from None
            entries.append({"ae_title": dest.get("ae_title"), "hosts": hosts})
        return {**data, "node": {**node, "accept": entries}}

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        for model in self.models:
            if not re.match(r"^[a-z0-9][a-z0-9_.-]{0,63}$", model):
                raise _KeyedError(
                    ("models", model),
                    "model names are 1-64 lower-case letters, digits, '_', '.' or '-'",
                )
        if self.retention.high_watermark_mb and (
            self.retention.high_watermark_mb <= self.node.min_free_disk_mb
        ):
            raise _KeyedError(
                ("retention", "high_watermark_mb"),
                "must be above node.min_free_disk_mb, so old series go before instances are"
                " refused",
            )
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        for index, rule in enumerate(self.rules):
            for dest in rule.send_to:
                if dest not in self.destinations:
                    known = ", ".join(sorted(self.destinations)) or "none defined"
                    raise _KeyedError(
                        ("rules", index, "send_to"),
                        f"unknown destination {dest!r} (known: {known})",
                    )
        return self

    @property
    def spool_dir(self) -> Path:
        return self.node.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.node.data_dir / "results"

    @property
    def database_path(self) -> Path:
        return self.node.data_dir / "state.sqlite3"
