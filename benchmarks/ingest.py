"""Ingest rate: dcmtk ``storescu`` into dcmtk ``storescp`` (baseline) and into the node's SCP.

Both receivers get the same files over one association each, with the same maximum PDU
(the node's default, 128 KiB) and ``TCP_NODELAY=1``. The node runs with no rules, so
nothing but reception happens; unlike storescp it fsyncs every instance before it
answers success (that cost is part of what is measured).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.ct_series import write_ct_series
from tools.net import free_port, tail, wait_until
from tools.node_process import NodeProcess, NodeStartError

MAX_PDU = 131072


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class IngestResult:
    """Runs of one receiver: seconds per run, images per second per run."""

    receiver: str
    images: int
    seconds: list[float] = field(default_factory=list)
    stored: list[int | None] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.images / s for s in self.seconds]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "images_per_s": [round(r, 1) for r in self.rates],
            "median_images_per_s": round(self.median_rate, 1),
        }


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def send_with_storescu(files: list[Path], aet: str, port: int) -> float:
    """Send ``files`` over one association; return wall seconds (storescu start to exit)."""
    command = ["storescu", "-aec", aet, "127.0.0.1", str(port), *map(str, files)]
    started = time.perf_counter()
    result = subprocess.run(command, env=dcmtk_env(), capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu exited {result.returncode}: {result.stderr[-2000:]}")
    return seconds


def _count_dicom(directory: Path) -> int:
    """Files under ``directory`` (storescp names them ``CT.<SOP UID>``, the node ``<UID>.dcm``)."""
    return sum(1 for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


def run_ingest(workdir: Path, count: int = 300, repeat: int = 3) -> dict[str, Any]:
    """Measure both receivers ``repeat`` times with ``count`` new 512x512 instances each.

    Each repetition sends a fresh series (new UIDs) to both receivers, alternating them
    so drift on the machine affects both alike.
    """
    series = [write_ct_series(workdir / f"series{i}", count)[1] for i in range(repeat)]
    baseline = IngestResult("dcmtk storescp", count)
    node_result = IngestResult("ainode SCP", count)

    scp_port = free_port()
    scp_dir = workdir / "storescp"
    scp_dir.mkdir()
    scp_log = workdir / "storescp.log"
    with scp_log.open("wb") as log_file:
        scp = subprocess.Popen(
            [
                *("storescp", "-aet", "BASELINE", "--max-pdu", str(MAX_PDU)),
                *("--output-directory", str(scp_dir), str(scp_port)),
            ],
            env=dcmtk_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    node_error: str | None = None
    try:
        wait_until(lambda: _listening(scp_port), 30, interval=0.05, message="storescp")
        with contextlib.ExitStack() as stack:
            node: NodeProcess | None = None
            try:
                node = stack.enter_context(NodeProcess({"rules": []}, workdir=workdir / "node"))
            except NodeStartError as exc:
                node_error = str(exc)
            for files in series:
                baseline.seconds.append(send_with_storescu(files, "BASELINE", scp_port))
                baseline.stored.append(_count_dicom(scp_dir))
                # Empty storescp's directory between runs.
                shutil.rmtree(scp_dir)
                scp_dir.mkdir()
                if node is None:
                    continue
                spool = node.data_dir / "spool"
                before = _count_dicom(spool) if spool.is_dir() else 0
                seconds = send_with_storescu(files, node.ae_title, node.dicom_port)
                node_result.seconds.append(seconds)
                node_result.stored.append(_count_dicom(spool) - before if spool.is_dir() else None)
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    if scp.returncode not in (0, -15):
        raise RuntimeError(f"storescp failed: {tail(scp_log)}")

    result: dict[str, Any] = {
        "images_per_run": count,
        "file_kib": round(series[0][0].stat().st_size / 1024, 1),
        "image": "512x512 16-bit CT, explicit VR little endian",
        "runs": repeat,
        "max_pdu": MAX_PDU,
        "baseline": baseline.as_dict(),
    }
    if node_error is not None:
        result["node"] = {"error": node_error}
    else:
        result["node"] = node_result.as_dict()
        result["ratio_node_over_baseline"] = round(
            node_result.median_rate / baseline.median_rate, 3
        )
    return result
