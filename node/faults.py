"""Fault injection for crash tests: ``AINODE_FAULT=<point>[:<n>][,...]`` kills the node there.

Production code calls :func:`fault_point` at a few named moments where a crash
matters (between two durable steps). With ``AINODE_FAULT`` unset, the call does
nothing. When the variable names the point, the process logs one line and sends
itself SIGKILL at once: no ``finally`` blocks, no flushing, like a power cut of
the process. ``<point>:<n>`` kills at the n-th time the point is reached in this
process (default 1), e.g. ``AINODE_FAULT=instance_stored:7`` lets six instances
through and dies with the seventh stored but not yet acknowledged. Only the
points in :data:`POINTS` exist; naming an unknown one, or a count that is not a
positive integer, is reported at start-up (:func:`check_fault_setting`).

The points, in the order a series meets them:

``instance_received``
    A C-STORE request arrived; every earlier one of its association was acknowledged
    (the sender waits for each response), nothing of this one is stored.
``instances_synced``
    A group commit pass fsynced its instances' directories; their rows are not yet
    committed and none of them is acknowledged (start-up re-records the files).
``instance_stored``
    The instance is durable and recorded, its success response not yet sent.
``series_completed_before_dispatch``
    The series is marked complete, its jobs not yet queued.
``inference_started`` / ``inference_done``
    Inside the worker, just before / just after the routine's ``run``.
``result_file_half_written``
    Half of the first result file's bytes are written.
``results_written``
    Every result file and the manifest are written; the job is not yet exporting.
``export_first_object_sent``
    The destination acknowledged the first object of a job's export; the rest are unsent.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter

log = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "AINODE_FAULT"

#: Every point a test can name, with where it sits.
POINTS: dict[str, str] = {
    "instance_received": "scp: a C-STORE arrived, the earlier ones acknowledged, none stored",
    "instances_synced": "ingest: a commit pass synced its files, their rows not committed",
    "instance_stored": "scp: the instance is durable and recorded, its response not yet sent",
    "series_completed_before_dispatch": (
        "completion: the series is marked complete, its jobs not yet queued"
    ),
    "inference_started": "worker: the routine's run is about to start",
    "inference_done": "worker: the routine's run returned, no result built",
    "result_file_half_written": "worker: half of the first result file's bytes are written",
    "results_written": "worker: result files and manifest written, the job not yet exporting",
    "export_first_object_sent": "export: the first object was acknowledged, the rest unsent",
}

#: ``AINODE_DELAY=<point>:<seconds>[,...]`` sleeps there instead (tests of slow steps).
DELAY_VARIABLE = "AINODE_DELAY"
DELAY_POINTS: dict[str, str] = {
    "routines_loading": "app: the background start is about to import the routines",
    "inference_running": "execute: the routine is loaded and checked, its run about to start",
}

_reached: Counter[str] = Counter()
_lock = threading.Lock()


def _requested() -> dict[str, int]:
    """Armed points with the hit that kills (1 = the first); malformed counts are left out."""
    armed: dict[str, int] = {}
    for item in os.environ.get(ENVIRONMENT_VARIABLE, "").split(","):
        name, _, count = item.strip().partition(":")
        if name and (not count or (count.isdigit() and int(count) > 0)):
            armed[name] = int(count) if count else 1
    return armed


def check_fault_setting() -> None:
    """Log the armed fault points (a warning: this is for tests) and any unknown name."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    requested = _requested()
    names = {item.strip().partition(":")[0] for item in value.split(",") if item.strip()}
    for name in sorted(names - POINTS.keys()):
        log.error("unknown fault point ignored name=%s known=%s", name, ",".join(sorted(POINTS)))
    for name in sorted((names & POINTS.keys()) - requested.keys()):
        log.error("fault point with a malformed count ignored name=%s", name)
    armed = sorted(f"{name}:{count}" for name, count in requested.items() if name in POINTS)
    if armed:
        log.warning("fault injection armed points=%s", ",".join(armed))
    delays = _delays()
    for name in sorted(delays.keys() - DELAY_POINTS.keys()):
        log.error("unknown delay point ignored name=%s known=%s", name, ",".join(DELAY_POINTS))
    if delays:
        log.warning("delays armed points=%s", ",".join(f"{n}:{s:g}" for n, s in delays.items()))


def _delays() -> dict[str, float]:
    """``AINODE_DELAY`` as point → seconds (malformed items left out)."""
    delays: dict[str, float] = {}
    for item in os.environ.get(DELAY_VARIABLE, "").split(","):
        name, _, seconds = item.strip().partition(":")
        try:
            delays[name] = float(seconds)
        except ValueError:
            continue
    return delays


def delay_point(name: str) -> None:
    """Sleep the seconds ``AINODE_DELAY`` gives ``name`` (a no-op when unset)."""
    assert name in DELAY_POINTS, name
    seconds = _delays().get(name, 0.0) if os.environ.get(DELAY_VARIABLE) else 0.0
    if seconds > 0:
        log.warning("delay injected point=%s seconds=%g", name, seconds)
        time.sleep(seconds)


def fault_point(name: str) -> None:
    """SIGKILL this process if ``AINODE_FAULT`` names ``name`` and this is the hit it
    names (a no-op otherwise)."""
    assert name in POINTS, name
    if not os.environ.get(ENVIRONMENT_VARIABLE):
        return
    kill_at = _requested().get(name)
    if kill_at is None:
        return
    with _lock:
        _reached[name] += 1
        if _reached[name] < kill_at:
            return
        log.critical("fault injected: killing the process point=%s hit=%d", name, _reached[name])
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
