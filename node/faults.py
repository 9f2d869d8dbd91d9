"""Fault injection for crash tests: ``AINODE_FAULT=<point>[,<point>...]`` kills the node there.

Production code calls :func:`fault_point` at a few named moments where a crash
matters (between two durable steps). With ``AINODE_FAULT`` unset, the call does
nothing. When the variable names the point, the process logs one line and sends
itself SIGKILL at once: no ``finally`` blocks, no flushing, like a power cut of
the process. Only the points in :data:`POINTS` exist; naming an unknown one is
reported at start-up (:func:`check_fault_setting`).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "AINODE_FAULT"

#: Every point a test can name, with where it sits.
POINTS: dict[str, str] = {
    "series_completed_before_dispatch": (
        "completion: the series is marked complete, its jobs not yet queued"
    ),
    "result_file_half_written": "worker: half of the first result file's bytes are written",
}


def _requested() -> set[str]:
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return {name.strip() for name in value.split(",") if name.strip()}


def check_fault_setting() -> None:
    """Log the armed fault points (a warning: this is for tests) and any unknown name."""
    requested = _requested()
    for name in sorted(requested - POINTS.keys()):
        log.error("unknown fault point ignored name=%s known=%s", name, ",".join(sorted(POINTS)))
    armed = sorted(requested & POINTS.keys())
    if armed:
        log.warning("fault injection armed points=%s", ",".join(armed))


def fault_point(name: str) -> None:
    """SIGKILL this process if ``AINODE_FAULT`` names ``name`` (a no-op otherwise)."""
    assert name in POINTS, name
    if name in _requested():
        log.critical("fault injected: killing the process point=%s", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
