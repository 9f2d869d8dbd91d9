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
from node.config.dicom import AUTO_RECEIVER_PROCESSES_MAX, DicomSettings
from node.config.dicomweb import DicomWebSettings
from node.config.executor import ExecutorSettings
from node.config.logs import LoggingSettings
from node.config.models import ModelSettings
from node.config.network import NodeSettings
from node.config.retention import RetentionSettings
from node.config.rules import RuleSettings
from node.config.security import SecuritySettings
from node.config.sources import AnySource
from node.config.state import StateSettings
from node.config.workers import WorkerSettings
from node.config.worklist import WorklistSettings
from node.host import usable_cpus


class Settings(_Strict):
    """The whole configuration."""

    node: NodeSettings = NodeSettings()
    #: The processes receiving on the DICOM port(s) (README "Several receiver processes").
    dicom: DicomSettings = DicomSettings()
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
    #: Where jobs, series, rules, users, audit and pulls live (SQLite file or PostgreSQL).
    state: StateSettings = StateSettings()
    #: The node as a UPS worklist: task code -> rule or plugin (README "Worklist (UPS)").
    worklist: WorklistSettings = WorklistSettings()
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
        wanted = self.dicom.receiver_processes  # auto means 1 with an in-memory state
        if wanted != "auto" and wanted > 1 and self.state_in_memory:
            raise _KeyedError(
                ("dicom", "receiver_processes"),
                "several receiver processes share one state: use an SQLite file or"
                " PostgreSQL, not an in-memory database",
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
        for name, source in self.sources.items():
            worklist = getattr(source, "worklist", None)
            if worklist is not None and worklist.inputs_source not in (None, *self.sources):
                raise _KeyedError(
                    ("sources", name, "worklist", "inputs_source"),
                    f"unknown source {worklist.inputs_source!r}",
                )
        return self

    @property
    def spool_dir(self) -> Path:
        return self.node.spool_dir or self.node.data_dir / "spool"

    @property
    def spool_subdir(self) -> str | None:
        """The directory of this node's own files in a shared spool (``node.spool_dir`` set):
        its name, with characters other than letters, digits, ``.``, ``_``, ``-`` as ``_``."""
        if self.node.spool_dir is None:
            return None
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.node.identity)

    @property
    def results_dir(self) -> Path:
        return self.node.results_dir or self.node.data_dir / "results"

    @property
    def receiver_process_count(self) -> int:
        """Processes receiving on the DICOM port(s), the node's own included
        (``dicom.receiver_processes``; ``auto``: one per usable CPU up to
        :data:`~node.config.dicom.AUTO_RECEIVER_PROCESSES_MAX`, only the node's own with an
        in-memory state, which no other process can open)."""
        wanted = self.dicom.receiver_processes
        if wanted != "auto":
            return wanted
        if self.state_in_memory:
            return 1
        return min(AUTO_RECEIVER_PROCESSES_MAX, usable_cpus())

    @property
    def state_in_memory(self) -> bool:
        """The SQLite state lives in one process's memory (``sqlite:///:memory:``)."""
        if self.state.is_postgres:
            return False
        path = str(self.database_path)
        return path == ":memory:" or path.startswith("file::memory:") or "mode=memory" in path

    @property
    def database_path(self) -> Path:
        """The SQLite state file (``state.url: sqlite:///…`` or the data directory's)."""
        return self.state.sqlite_path(self.node.data_dir / "state.sqlite3")
