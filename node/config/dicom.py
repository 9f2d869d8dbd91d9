"""How the node receives DICOM: the processes behind its listener port(s)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from node.config.base import _Strict

#: ``receiver_processes: auto`` uses one process per usable CPU, up to this many.
AUTO_RECEIVER_PROCESSES_MAX = 4


class DicomSettings(_Strict):
    """``dicom``: the receiving side of the DICOM listener."""

    #: Processes serving associations on the node's DICOM port(s). 1: the node's own
    #: process only. N > 1: the node's listener hands each connection to the process
    #: (of N: N-1 receive-only ones and itself) with the fewest open connections, each
    #: with its own GIL; they need a state every process can open (an SQLite file or
    #: PostgreSQL). ``auto``: one per usable CPU up to
    #: :data:`AUTO_RECEIVER_PROCESSES_MAX` (1 with an in-memory state); see
    #: :meth:`node.config.Settings.receiver_process_count`.
    receiver_processes: Annotated[int, Field(ge=1, le=32)] | Literal["auto"] = "auto"
    #: First wait before a receiver process that died is started again; doubled after
    #: each quick death, up to ``receiver_restart_max_seconds``.
    receiver_restart_seconds: float = Field(1.0, gt=0, le=60)
    receiver_restart_max_seconds: float = Field(30.0, gt=0, le=600)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> DicomSettings:
        if self.receiver_restart_max_seconds < self.receiver_restart_seconds:
            raise ValueError("receiver_restart_max_seconds is below receiver_restart_seconds")
        return self
