"""What the machine itself was doing while a wait timed out.

A shared 2-core CI machine sometimes stops everything for tens of seconds: the disk
stalls every writer, or the host does not run the VM. A test's timeout then fires while
the code under test was no slower than the rest of the machine. These readings tell the
two apart in the failure message: Linux's pressure-stall totals (``/proc/pressure``),
the CPU time the host stole (``/proc/stat``), the load, and what a process is blocked in.

Examples
--------
>>> before = sample()
>>> ...  # a wait that timed out
>>> print(since(before))
over 31.0 s: IO fully stalled 24.5 s, memory fully stalled 0.0 s, CPU wanted by some 3.2 s, \
stolen by the host 0.0 s, load 9.10
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Sample:
    """Cumulative counters at one moment (None where this kernel has no such file)."""

    at: float
    io_full_us: int | None
    cpu_some_us: int | None
    memory_full_us: int | None
    steal_us: int | None


def _pressure_total(resource: str, line: str) -> int | None:
    try:
        text = (PROC / "pressure" / resource).read_text(encoding="ascii")
    except OSError:
        return None
    for row in text.splitlines():
        if row.startswith(line):
            for field in row.split():
                if field.startswith("total="):
                    return int(field.removeprefix("total="))
    return None


def _steal_us() -> int | None:
    try:
        first = (PROC / "stat").read_text(encoding="ascii").splitlines()[0].split()
    except (OSError, IndexError):
        return None
    return int(first[8]) * 1_000_000 // _TICK if len(first) > 8 else None


def sample() -> Sample:
    """The machine's stall counters now."""
    return Sample(
        at=time.monotonic(),
        io_full_us=_pressure_total("io", "full"),
        cpu_some_us=_pressure_total("cpu", "some"),
        memory_full_us=_pressure_total("memory", "full"),
        steal_us=_steal_us(),
    )


def _delta_s(after: int | None, before: int | None) -> str:
    return "?" if after is None or before is None else f"{(after - before) / 1e6:.1f} s"


def since(before: Sample) -> str:
    """One line: how long the machine stalled since ``before``, and its load now."""
    now = sample()
    return (
        f"over {now.at - before.at:.1f} s: "
        f"IO fully stalled {_delta_s(now.io_full_us, before.io_full_us)}, "
        f"memory fully stalled {_delta_s(now.memory_full_us, before.memory_full_us)}, "
        f"CPU wanted by some {_delta_s(now.cpu_some_us, before.cpu_some_us)}, "
        f"stolen by the host {_delta_s(now.steal_us, before.steal_us)}, "
        f"load {os.getloadavg()[0]:.2f}"
    )


def process_state(pid: int) -> str:
    """``pid``'s scheduler state and the kernel function it waits in, e.g.
    ``D (disk sleep) in jbd2_log_wait_commit``."""
    try:
        status = (PROC / str(pid) / "status").read_text(encoding="ascii", errors="replace")
        wchan = (PROC / str(pid) / "wchan").read_text(encoding="ascii", errors="replace")
    except OSError:
        return "gone"
    state = next(
        (
            line.split(":", 1)[1].strip()
            for line in status.splitlines()
            if line.startswith("State:")
        ),
        "?",
    )
    return f"{state} in {wchan or '-'}"
