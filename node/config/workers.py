"""Inference workers and their devices."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from node.config.base import _Strict


class WorkerSettings(_Strict):
    """Inference workers: one long-lived worker thread per device."""

    #: ``auto``: one worker per visible CUDA device, else one CPU worker; ``cuda``: every
    #: visible CUDA device; ``cpu``; or one device such as ``cuda:1``. Pin GPUs with
    #: ``CUDA_VISIBLE_DEVICES`` (torch only sees those) or list them in ``devices``.
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    #: Explicit devices (one worker each), e.g. ``["cuda:0", "cuda:1"]``; overrides ``device``.
    devices: list[str] = Field(default_factory=list)
    #: Threads for CPU inference; 0 picks ``cores - 1`` (at least 1) so receiving keeps a core.
    cpu_threads: int = Field(0, ge=0)
    #: Seconds a job may run before it is failed.
    job_timeout_seconds: float = Field(1800.0, gt=0)
    #: Device memory the loaded models of one GPU may use (sum of their declared
    #: ``gpu_memory_mb``); least recently used models are unloaded beyond it.
    #: Default: 80 % of the device's memory.
    gpu_memory_budget_mb: int | None = Field(None, gt=0)
    #: Seconds a job's lease (running, or an export in progress) lasts unless its holder
    #: renews it (every third of it); a node that dies loses its jobs to another node after
    #: this long.
    lease_seconds: float = Field(60.0, gt=0)
    #: Read the next queued series while the current job runs.
    prefetch: bool = True
    #: Memory (MiB) a series read during its completion quiet period may hold before its
    #: job starts (one series at a time, the one nearest its deadline; local executor
    #: only). 0 disables it. 1536 fits a 1000-slice 512x512 CT (float32, 1 GiB).
    read_ahead_mb: int = Field(1536, ge=0)
    #: Also read a series routed to a job while it arrives (each header parsed and each
    #: CT slice scanned for the input-quality gate once per 32 instances stored), so that
    #: the read in the quiet period only assembles it. Needs ``read_ahead_mb``; series
    #: received by other receiver processes are read in the quiet period only.
    read_while_arriving: bool = True
