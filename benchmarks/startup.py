"""Start-up time: from ``ainode serve`` starting to the first answers.

Per run a fresh node process (``python -m node serve``, the chest rule, an empty data
directory, ``TCP_NODELAY=1``) is started and polled every 20 ms, from two threads, until

- ``GET /healthz`` answers 200 (the DICOM listener and the HTTP API are up);
- a C-ECHO (pynetdicom, Verification) succeeds;
- ``GET /readyz`` answers 200 (the routines are loaded, jobs can run).

Each is timed from just before the process is spawned; the process is then stopped with
SIGTERM. ``--startup-runs`` runs (default 10); medians are reported. ``--startup-cwd`` runs
another checkout's node (``python -m node`` imports the package of the working directory),
e.g. an export of an older commit to compare before and after.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from node.config import BUILT_IN_CHEST_RULE
from node.dicom.reactor_pause import pause_safely
from tools.net import LOCALHOST, free_ports
from tools.node_process import PROJECT_ROOT, default_config

POLL_SECONDS = 0.02


def _first_ok(
    check: Any, started: float, deadline: float, into: dict[str, float], key: str
) -> None:
    while time.monotonic() < deadline:
        try:
            if check():
                into[key] = time.monotonic() - started
                return
        except Exception:  # not up yet
            pass
        time.sleep(POLL_SECONDS)


def _echo(port: int) -> bool:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate(
        LOCALHOST, port, ae_title="AINODE", evt_handlers=[(evt.EVT_CONN_OPEN, pause_safely)]
    )
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


def one_start(workdir: Path, *, cwd: Path, timeout: float = 120.0) -> dict[str, float]:
    """Seconds from spawning the node to healthz 200, C-ECHO success and readyz 200."""
    dicom_port, http_port = free_ports(2)
    config = default_config(workdir / "data", dicom_port, http_port)
    config["rules"] = [BUILT_IN_CHEST_RULE]
    config_path = workdir / "ainode.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
    env.update({"TCP_NODELAY": "1", "PYTHONUNBUFFERED": "1"})
    url = f"http://{LOCALHOST}:{http_port}"
    times: dict[str, float] = {}
    with (workdir / "node.log").open("ab") as log_file:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    deadline = started + timeout
    try:
        pollers = [
            threading.Thread(
                target=_first_ok,
                args=(lambda: _http_ok(f"{url}/healthz"), started, deadline, times, "healthz_s"),
            ),
            threading.Thread(
                target=_first_ok,
                args=(lambda: _echo(dicom_port), started, deadline, times, "c_echo_s"),
            ),
        ]
        for poller in pollers:
            poller.start()
        for poller in pollers:
            poller.join()
        _first_ok(lambda: _http_ok(f"{url}/readyz"), started, deadline, times, "readyz_s")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    missing = {"healthz_s", "c_echo_s", "readyz_s"} - times.keys()
    if missing:
        raise TimeoutError(f"node never answered {sorted(missing)}; log in {workdir}")
    return times


def run_startup(
    *, runs: int = 10, cwd: Path = PROJECT_ROOT, workdir: Path | None = None
) -> dict[str, Any]:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ainode-startup-"))
    samples = [one_start(workdir / f"run-{index}", cwd=cwd) for index in range(runs)]
    result: dict[str, Any] = {"runs": samples, "checkout": str(cwd)}
    for key in ("healthz_s", "c_echo_s", "readyz_s"):
        result[f"median_{key}"] = statistics.median(sample[key] for sample in samples)
    return result


def startup_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Start-up: {len(result['runs'])} starts of {result['checkout']},"
        " seconds from spawning the process",
        f"  {'run':<6} {'/healthz 200':>13} {'C-ECHO ok':>10} {'/readyz 200':>12}",
    ]
    for index, run in enumerate(result["runs"]):
        lines.append(
            f"  {index:<6} {run['healthz_s']:>13.2f} {run['c_echo_s']:>10.2f}"
            f" {run['readyz_s']:>12.2f}"
        )
    lines.append(
        f"  {'median':<6} {result['median_healthz_s']:>13.2f} {result['median_c_echo_s']:>10.2f}"
        f" {result['median_readyz_s']:>12.2f}"
    )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """Seconds from spawn to /healthz, C-ECHO and /readyz for every start."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=80)
    runs = range(1, len(result["runs"]) + 1)
    for key, label in (("healthz_s", "/healthz"), ("c_echo_s", "C-ECHO"), ("readyz_s", "/readyz")):
        ax.plot(runs, [run[key] for run in result["runs"]], "o-", label=label)
    ax.set_xticks(list(runs))
    ax.set_xlabel("start")
    ax.set_ylabel("seconds from spawn")
    ax.set_ylim(bottom=0)
    ax.set_title("Node start-up")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
