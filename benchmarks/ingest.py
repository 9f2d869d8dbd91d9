"""Ingest rate: dcmtk ``storescu`` into dcmtk ``storescp``, Orthanc and the node's SCP.

Three receivers take turns on the same files in one run, with the same maximum PDU (the
node's default, 128 KiB) and ``TCP_NODELAY=1``, in two modes: one association (one
``storescu``) and four concurrent associations (four ``storescu`` processes, each sending
a quarter of the files). ``storescp`` is the baseline (``--fork`` in the concurrent mode;
it neither fsyncs nor indexes). Orthanc (Debian's binary through
:class:`~tools.orthanc.OrthancServer`) runs with its default ``SyncStorageArea`` (each
file fsynced) and indexes every instance in SQLite. The node runs with no rules, so
nothing but reception happens; it fsyncs each instance and records it before answering
success. It is measured twice in the same run: ``node`` (the default,
``dicom.receiver_processes: auto``: one process per usable CPU up to 4, the node's listener
handing each association to the least busy) and ``node-1proc`` (one process, all
associations sharing its interpreter lock); same durability promise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.ct_series import write_ct_series
from node.config import settings_from_mapping
from tools.net import free_port, tail, wait_until
from tools.node_process import NodeProcess, NodeStartError
from tools.orthanc import OrthancServer
from tools.proc import descendants, stat_fields

MAX_PDU = 131072
MODES = (1, 4)
#: Each node row and its ``dicom.receiver_processes``.
NODES: dict[str, int | str] = {"node": "auto", "node-1proc": 1}
RECEIVERS = ("storescp", "orthanc", *NODES)


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class IngestResult:
    """Runs of one receiver in one mode: seconds per run, images per second per run."""

    receiver: str
    associations: int
    images: int
    seconds: list[float] = field(default_factory=list)
    stored: list[int | None] = field(default_factory=list)
    #: A node's instances per receiving process (``received_by``), per run.
    spread: list[dict[str, int]] = field(default_factory=list)
    #: CPU seconds (user + system) the receiver's processes used per run, None where
    #: the receiver's process is not known.
    cpu_seconds: list[float | None] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.images / s for s in self.seconds]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_ms_per_instance(self) -> float | None:
        """Median CPU milliseconds per instance over the runs (None: not measured)."""
        measured = [c for c in self.cpu_seconds if c is not None]
        if not measured:
            return None
        return round(statistics.median(measured) * 1000 / self.images, 2)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "cpu_seconds": [None if c is None else round(c, 3) for c in self.cpu_seconds],
            "images_per_s": [round(r, 1) for r in self.rates],
            "median_images_per_s": round(self.median_rate, 1),
            "cpu_ms_per_instance": self.cpu_ms_per_instance,
        }


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tree_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid``, of its children it has waited for, and of
    its live descendants (a node's receiver processes, storescp's forked children)."""
    if pid is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total, seen = 0, False
    for current in [pid, *descendants(pid)]:
        fields = stat_fields(current)
        if fields is None:  # gone meanwhile
            continue
        seen = True
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total / ticks if seen else None


def _used(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def send_with_storescu(files: list[Path], aet: str, port: int, associations: int = 1) -> float:
    """Send ``files`` over ``associations`` concurrent storescu processes (a share each);
    return wall seconds from the first start to the last exit."""
    shares = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            ["storescu", "-aec", aet, "127.0.0.1", str(port), *map(str, share)],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in shares
        if share
    ]
    errors = []
    for process in processes:
        _, stderr = process.communicate(timeout=900)
        if process.returncode != 0:
            errors.append(f"storescu exited {process.returncode}: {stderr[-2000:]}")
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError("\n".join(errors))
    return seconds


def _count_dicom(directory: Path) -> int:
    """Files under ``directory`` (storescp names them ``CT.<SOP UID>``, the node ``<UID>.dcm``)."""
    return sum(1 for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


def _received_by(state: Path, files: list[Path]) -> dict[str, int]:
    """How many of ``files`` (named by SOP Instance UID) each node process received."""
    import pydicom

    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]
    marks = ",".join("?" * len(uids))
    with contextlib.closing(sqlite3.connect(state, timeout=30)) as db:
        rows = db.execute(
            f"SELECT received_by, COUNT(*) FROM instances WHERE sop_uid IN ({marks})"
            " GROUP BY received_by",
            uids,
        ).fetchall()
    return {str(name): int(count) for name, count in rows}


@contextlib.contextmanager
def _storescp(workdir: Path, fork: bool) -> Any:
    """A storescp on a free port writing into ``workdir/out``; yields (port, out, pid)."""
    port = free_port()
    out = workdir / "out"
    out.mkdir(parents=True)
    log_path = workdir / "storescp.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *("storescp", "-aet", "BASELINE", "--max-pdu", str(MAX_PDU)),
                *(["--fork"] if fork else []),
                *("--output-directory", str(out), str(port)),
            ],
            env=dcmtk_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: _listening(port), 30, interval=0.05, message="storescp")
        yield port, out, process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=10)
    if process.returncode not in (0, -15):
        raise RuntimeError(f"storescp failed: {tail(log_path)}")


def run_ingest(workdir: Path, count: int = 303, repeat: int = 3) -> dict[str, Any]:
    """Measure every receiver ``repeat`` times per mode with ``count`` new instances each.

    Each repetition of each mode sends a fresh series (new UIDs, so no receiver sees a
    duplicate) to the three receivers in turn, so drift on the machine affects all alike.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    results = {
        (receiver, mode): IngestResult(receiver, mode, count)
        for receiver in RECEIVERS
        for mode in MODES
    }
    file_kib = 0.0
    with contextlib.ExitStack() as stack:
        plain_port, plain_out, plain_pid = stack.enter_context(
            _storescp(workdir / "storescp", False)
        )
        fork_port, fork_out, fork_pid = stack.enter_context(
            _storescp(workdir / "storescp-fork", True)
        )
        scp_pid = {mode: plain_pid if mode == 1 else fork_pid for mode in MODES}
        orthanc = stack.enter_context(
            OrthancServer(
                workdir=workdir / "orthanc",
                plugins=(),
                config_overrides={"SyncStorageArea": True, "MaximumPduLength": MAX_PDU},
                graceful_stop=False,
            )
        )
        nodes: dict[str, NodeProcess] = {}
        node_errors: dict[str, str] = {}
        for name, processes in NODES.items():
            config = {
                "rules": [],
                "node": {"max_pdu": MAX_PDU},
                "dicom": {"receiver_processes": processes},
            }
            try:
                nodes[name] = stack.enter_context(NodeProcess(config, workdir=workdir / name))
            except NodeStartError as exc:
                node_errors[name] = str(exc)
        for run in range(repeat):
            for mode in MODES:
                series_dir = workdir / f"series-{run}-{mode}"
                files = write_ct_series(series_dir, count)[1]
                file_kib = round(files[0].stat().st_size / 1024, 1)
                scp_port, scp_out = (plain_port, plain_out) if mode == 1 else (fork_port, fork_out)
                entry = results[("storescp", mode)]
                before_cpu = tree_cpu_seconds(scp_pid[mode])
                entry.seconds.append(send_with_storescu(files, "BASELINE", scp_port, mode))
                entry.cpu_seconds.append(_used(before_cpu, tree_cpu_seconds(scp_pid[mode])))
                entry.stored.append(_count_dicom(scp_out))
                shutil.rmtree(scp_out)
                scp_out.mkdir()
                entry = results[("orthanc", mode)]
                before_cpu = tree_cpu_seconds(orthanc.pid)
                entry.seconds.append(
                    send_with_storescu(files, orthanc.aet, orthanc.dicom_port, mode)
                )
                entry.cpu_seconds.append(_used(before_cpu, tree_cpu_seconds(orthanc.pid)))
                entry.stored.append(None)
                for name, node in nodes.items():
                    spool = node.data_dir / "spool"  # a receiver process's files included
                    before = _count_dicom(spool) if spool.is_dir() else 0
                    entry = results[(name, mode)]
                    before_cpu = tree_cpu_seconds(node.pid)
                    entry.seconds.append(
                        send_with_storescu(files, node.ae_title, node.dicom_port, mode)
                    )
                    entry.cpu_seconds.append(_used(before_cpu, tree_cpu_seconds(node.pid)))
                    entry.stored.append(_count_dicom(spool) - before if spool.is_dir() else None)
                    entry.spread.append(_received_by(node.data_dir / "state.sqlite3", files))
                shutil.rmtree(series_dir)

    result: dict[str, Any] = {
        "images_per_run": count,
        "file_kib": file_kib,
        "image": "512x512 16-bit CT, explicit VR little endian",
        "runs": repeat,
        "max_pdu": MAX_PDU,
        "modes": list(MODES),
        "receiver_processes": {name: receiver_processes(wanted) for name, wanted in NODES.items()},
        "receivers": {},
        "ratios": {},
    }
    for mode in MODES:
        for receiver in RECEIVERS:
            key = f"{receiver}/{mode}"
            if receiver in node_errors:
                result["receivers"][key] = {"error": node_errors[receiver]}
                continue
            result["receivers"][key] = results[(receiver, mode)].as_dict()
        ratios: dict[str, float] = {}
        for name in NODES:
            if name in node_errors:
                continue
            rate = results[(name, mode)].median_rate
            prefix = name.replace("-", "_")
            for other in ("orthanc", "storescp"):
                ratios[f"{prefix}_over_{other}"] = round(
                    rate / results[(other, mode)].median_rate, 3
                )
        result["ratios"][str(mode)] = ratios
    return result


_SHOWN = {"orthanc": "Orthanc"}


def receiver_processes(wanted: int | str) -> int:
    """The processes a node on this machine receives in with ``receiver_processes: wanted``
    (and its SQLite file state)."""
    settings = settings_from_mapping({"dicom": {"receiver_processes": wanted}}, environ={})
    return settings.receiver_process_count


def ingest_table(result: dict[str, Any]) -> list[str]:
    """Printed lines: one per receiver and mode, then the ratios per mode."""
    lines = [
        f"Ingest: {result['runs']} runs x {result['images_per_run']} instances "
        f"({result['image']}, {result['file_kib']} KiB/file), "
        f"storescu, max PDU {result['max_pdu']}",
        f"  {'receiver':<10} {'assocs':>6} {'median img/s':>12} {'CPU ms/img':>10}   runs (img/s)",
    ]
    if result.get("receiver_processes"):
        counts = ", ".join(f"{name} {n}" for name, n in result["receiver_processes"].items())
        lines.insert(1, f"  receiving processes: {counts}")
    for key, entry in result["receivers"].items():
        receiver, mode = key.split("/")
        if "error" in entry:
            first = entry["error"].splitlines()[0]
            lines.append(f"  {receiver:<10} {mode:>6} {'-':>12}   not measured: {first}")
            continue
        runs = ", ".join(f"{r:.0f}" for r in entry["images_per_s"])
        cpu = entry.get("cpu_ms_per_instance")
        shown_cpu = "-" if cpu is None else f"{cpu:.2f}"
        lines.append(
            f"  {receiver:<10} {mode:>6} {entry['median_images_per_s']:>12.1f} {shown_cpu:>10}"
            f"   {runs}"
        )
    for mode, ratios in result["ratios"].items():
        shown = []
        for key, value in ratios.items():
            name, _, other = key.partition("_over_")
            shown.append(f"{name.replace('_', '-')}/{_SHOWN.get(other, other)} {value:.2f}")
        lines.append(f"  {mode} association(s): {', '.join(shown)}")
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """A grouped bar chart: median images/s per receiver, one group per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [int(m) for m in result["modes"]]
    width = 0.8 / len(RECEIVERS)
    figure, axes = plt.subplots(figsize=(7, 4))
    for index, receiver in enumerate(RECEIVERS):
        heights = [
            result["receivers"].get(f"{receiver}/{mode}", {}).get("median_images_per_s", 0.0)
            for mode in modes
        ]
        positions = [m + (index - (len(RECEIVERS) - 1) / 2) * width for m in range(len(modes))]
        bars = axes.bar(positions, heights, width, label=receiver)
        axes.bar_label(bars, fmt="%.0f", fontsize=8)
    axes.set_xticks(range(len(modes)), [f"{m} association(s)" for m in modes])
    axes.set_ylabel("images / s (median)")
    axes.set_title(
        f"Ingest, {result['images_per_run']} x {result['file_kib']} KiB CT, {result['runs']} runs"
    )
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
