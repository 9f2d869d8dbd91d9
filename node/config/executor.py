"""Where jobs' inference runs: in the node (``local``) or on a Ray cluster (``ray``)."""

from __future__ import annotations

import importlib.util
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from node.config.base import _KeyedError, _Strict

#: ``auto``, a Ray Client address ``ray://host:port`` or a GCS address ``host:port``.
_ADDRESS = re.compile(r"^(auto|ray://[A-Za-z0-9._-]+:\d{1,5}|[A-Za-z0-9._-]+:\d{1,5})$")


class ExecutorSettings(_Strict):
    """``executor:`` — ``kind: local`` (default: one thread per device in the node) or
    ``kind: ray`` (one Ray actor per routine and GPU; README "Scaling out")."""

    kind: Literal["local", "ray"] = "local"
    #: The Ray cluster: ``auto`` (the cluster this host belongs to), ``host:port`` (its
    #: GCS; this host runs a Ray node of it) or ``ray://host:10001`` (Ray Client).
    address: str = "auto"
    #: The Ray namespace the node's named actors live in.
    namespace: str = Field("ainode", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: Jobs sent to one actor and not yet back (one runs, the others' inputs wait at the actor).
    max_in_flight_per_actor: int = Field(2, ge=1, le=64)
    #: Actors per routine; 0: one per unit of ``gpu_resource`` in the cluster (at least one).
    actors_per_routine: int = Field(0, ge=0, le=256)
    #: The Ray resource a GPU routine's actor asks for: ``GPU`` (``num_gpus``) or a custom
    #: resource standing in for one (e.g. ``ainode_gpu``, given to ``ray start --resources``).
    gpu_resource: str = Field("GPU", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    #: Memory of one GPU of the workers (MiB): an actor asks for the share its routine
    #: declares (``resources.gpu_memory_mb``); unset: a whole GPU per GPU routine's actor.
    gpu_memory_mb: int | None = Field(None, gt=0)
    #: CPUs an actor asks for (a CPU-only routine's actor runs on them).
    cpus_per_actor: float = Field(1.0, gt=0)
    #: How instance files reach the actor: ``object_store`` (the node reads them and
    #: ``ray.put``s their bytes; no shared filesystem needed) or ``shared`` (every Ray node
    #: mounts the node's spool at the same path and reads the files itself).
    spool: Literal["object_store", "shared"] = "object_store"
    #: Seconds a job may be away beyond ``workers.job_timeout_seconds`` before it is taken
    #: back (the actor or its node is then assumed lost) and re-queued.
    lost_after_seconds: float = Field(120.0, gt=0)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError("must be 'auto', 'host:port' or 'ray://host:port'")
        return value

    @model_validator(mode="after")
    def _ray_installed(self) -> ExecutorSettings:
        if self.kind == "ray" and importlib.util.find_spec("ray") is None:
            raise _KeyedError(
                ("executor", "kind"),
                "ray is not installed; install the node's 'ray' extra (pip install 'ainode[ray]')",
            )
        return self
