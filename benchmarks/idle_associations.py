"""What associations held open without traffic cost a receiver: Orthanc against the node.

A sender (a PACS router, a modality) may keep associations open between studies. Each
receiver is started with nothing else to do; its CPU (user + system of its processes,
from ``/proc``) is read over ``--idle-seconds`` with no association, then again with
``--idle-associations`` held open (the node's limit, 32), after
:data:`node.dicom.reactor.IDLE_AFTER` + 1 s for the node's waits to lengthen. The
associations are opened by :func:`tools.held_associations.held_associations`, whose own
threads wait for work, so the client hardly competes for the CPU. Orthanc gets as many
DICOM threads as associations (``DicomThreadsCount``; its default of 4 would queue the
rest). The node runs with its defaults (``receiver_processes: auto``), so the held
associations are spread over its receiving processes.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from benchmarks.ingest import tree_cpu_seconds
from node.dicom.reactor import IDLE_AFTER
from tools.held_associations import held_associations
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer

RECEIVERS = ("orthanc", "node")


def _cores(pid: int | None, seconds: float) -> float:
    """CPU cores ``pid``'s process tree used over the next ``seconds``."""
    before, started = tree_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    after, elapsed = tree_cpu_seconds(pid), time.monotonic() - started
    if before is None or after is None:
        raise RuntimeError(f"receiver process {pid} is gone")
    return (after - before) / elapsed


def _measure(pid: int | None, port: int, aet: str, count: int, seconds: float) -> dict[str, Any]:
    time.sleep(2.0)  # start-up work done
    idle = _cores(pid, seconds)
    opened = time.monotonic()
    with held_associations(port, count, called_ae=aet, calling_ae="IDLEBENCH") as (held, refused):
        opened_s = time.monotonic() - opened
        if len(held) != count:
            raise RuntimeError(f"{aet} held {len(held)} of {count} ({refused} refused)")
        time.sleep(IDLE_AFTER + 1.0)
        with_held = _cores(pid, seconds)
    return {
        "idle_cores": round(idle, 4),
        "held_cores": round(with_held, 4),
        "per_association_ms_per_s": round((with_held - idle) / count * 1000, 3),
        "open_seconds": round(opened_s, 2),
    }


def run_idle_associations(
    workdir: Path, *, count: int = 32, seconds: float = 10.0
) -> dict[str, Any]:
    receivers: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        orthanc = stack.enter_context(
            OrthancServer(
                workdir=workdir / "orthanc",
                plugins=(),
                config_overrides={"DicomThreadsCount": count + 2},
                graceful_stop=False,
            )
        )
        receivers["orthanc"] = _measure(
            orthanc.pid, orthanc.dicom_port, orthanc.aet, count, seconds
        )
        stack.close()
        node = stack.enter_context(
            NodeProcess(
                {"rules": [], "node": {"idle_timeout_seconds": 3600}}, workdir=workdir / "node"
            )
        )
        receivers["node"] = _measure(node.pid, node.dicom_port, node.ae_title, count, seconds)
    return {"associations": count, "seconds": seconds, "receivers": receivers}


def idle_associations_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Idle associations: {result['associations']} held open without traffic,"
        f" CPU cores over {result['seconds']:g} s",
        f"  {'receiver':<9} {'none held':>10} {'held':>8} {'ms/s per assoc':>15}",
    ]
    for name in RECEIVERS:
        row = result["receivers"][name]
        lines.append(
            f"  {name:<9} {row['idle_cores']:>10.3f} {row['held_cores']:>8.3f}"
            f" {row['per_association_ms_per_s']:>15.2f}"
        )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """CPU cores of each receiver with none and with the associations held."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=80)
    names = list(RECEIVERS)
    xs = range(len(names))
    rows = [result["receivers"][n] for n in names]
    ax.bar([x - 0.2 for x in xs], [r["idle_cores"] for r in rows], width=0.4, label="none held")
    ax.bar(
        [x + 0.2 for x in xs],
        [r["held_cores"] for r in rows],
        width=0.4,
        label=f"{result['associations']} held",
    )
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("CPU cores")
    ax.set_title("Idle associations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
