"""What the host lends this process: the CPUs it may run on; whether another process of
this host still runs."""

from __future__ import annotations

import math
import os
from pathlib import Path

#: cgroup v2's CPU limit of this process's group (``docker run --cpus``, a Kubernetes limit).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: those it may be scheduled on (its affinity), fewer
    when its cgroup's quota allows fewer (rounded up); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 limit to read
        pass
    return max(1, cpus)


def process_runs(pid: int) -> bool:
    """True when a process ``pid`` runs on this host (one of another user counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
