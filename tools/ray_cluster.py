"""A real Ray cluster on this machine: a head and worker processes, for tests and benchmarks.

Each Ray node is a ``ray start --block`` process (its services are its children), so one
worker "machine" can be killed outright (:meth:`RayCluster.kill_worker`: SIGKILL to the
process and every descendant, the raylet and its actors included) and everything is
stopped at the end, even on failure. The head runs with no CPU and none of the worker
resources (it coordinates; the node that drives the cluster uses its object store);
workers get ``worker_cpus`` CPUs and ``resources`` (e.g. ``{"ainode_gpu": 1}`` standing
in for a GPU). The cluster has its own short ``--temp-dir`` (Ray's socket paths are
limited in length) and token authentication off, so a token left in ``~/.ray`` by
another cluster does not apply.

Examples
--------
::

    with RayCluster(workers=2, resources={"ainode_gpu": 1}) as cluster:
        config["executor"] = {"kind": "ray", "address": cluster.address, ...}
        with NodeProcess(config, env=cluster.env) as node:
            ...
            cluster.kill_worker(cluster.worker_of_pid(actor_pid))
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tools.net import LOCALHOST, free_port
from tools.proc import descendants

RAY = str(Path(sys.executable).with_name("ray"))
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def ray_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a test cluster's processes and of the drivers that join it:
    this checkout first on the path (the actors import the node from it), no usage
    statistics, no token authentication."""
    path = os.environ.get("PYTHONPATH", "")
    env = {
        **os.environ,
        "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{path}" if path else str(PROJECT_ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        # Ray starts its workers at niceness 15: beside the suite's other workers (niceness
        # 0) an actor then gets about 1 % of a core and takes minutes to import torch.
        "RAY_worker_niceness": "0",
    }
    env.update(extra or {})
    return env


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process`` and all its descendants at once (a machine losing power)."""
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    process.wait(timeout=30)


class RayCluster:
    """A head and ``workers`` worker processes on free ports (see the module doc)."""

    def __init__(
        self,
        workers: int = 2,
        *,
        worker_cpus: int = 1,
        resources: Mapping[str, float] | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self.port = free_port()
        self.address = f"{LOCALHOST}:{self.port}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
        self.env = ray_environment(env)
        self._worker_count = workers
        self._worker_cpus = worker_cpus
        self._resources = dict(resources or {})
        self._timeout = startup_timeout
        self.head: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        log = (self.temp_dir / f"{name}.log").open("wb")
        with log:
            return subprocess.Popen(
                [RAY, "start", "--block", "--node-ip-address", LOCALHOST, *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def __enter__(self) -> RayCluster:
        try:
            self.head = self._start(
                "--head",
                f"--port={self.port}",
                "--num-cpus=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={self.temp_dir}",
                name="head",
            )
            self.wait_for_nodes(1)
            for _ in range(self._worker_count):  # one at a time: a busy GCS fails them
                self.add_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, attempts: int = 3) -> subprocess.Popen[bytes]:
        """Start one more worker process (a Ray node with the worker resources) and wait
        until the cluster counts it; a start that times out (a loaded machine) is retried."""
        alive = len([w for w in self.workers if w.poll() is None])
        for attempt in range(1, attempts + 1):
            worker = self._start(
                f"--address={self.address}",
                f"--num-cpus={self._worker_cpus}",
                "--resources",
                json.dumps(self._resources),
                name=f"worker-{len(self.workers)}-{attempt}",
            )
            try:
                self.wait_for_nodes(2 + alive, process=worker)
            except RuntimeError:
                kill_tree(worker)
                if attempt == attempts:
                    raise
                continue
            self.workers.append(worker)
            return worker
        raise AssertionError("unreachable")

    def wait_for_nodes(self, count: int, process: subprocess.Popen[bytes] | None = None) -> None:
        """Wait until the cluster has ``count`` live nodes (asked by a short-lived driver);
        give up early when ``process`` (the node being started) or the head exits."""
        script = (
            "import sys, time, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False)\n"
            "deadline = time.monotonic() + 20\n"
            "while time.monotonic() < deadline:\n"
            "    if sum(1 for n in ray.nodes() if n['Alive']) >= int(sys.argv[1]):\n"
            "        sys.exit(0)\n"
            "    time.sleep(0.3)\n"
            "sys.exit(1)\n"
        )
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:  # the GCS takes a while to listen
            done = subprocess.run(
                [sys.executable, "-c", script, str(count)],
                env=self.env,
                capture_output=True,
                timeout=120,
            )
            if done.returncode == 0:
                return
            if any(p is not None and p.poll() is not None for p in (self.head, process)):
                break
            time.sleep(1.0)
        raise RuntimeError(f"ray cluster did not reach {count} nodes; logs in {self.temp_dir}")

    def worker_of_pid(self, pid: int) -> int:
        """The index of the worker process whose tree holds ``pid`` (e.g. an actor)."""
        for index, worker in enumerate(self.workers):
            if pid in descendants(worker.pid):
                return index
        raise LookupError(f"process {pid} belongs to no worker of this cluster")

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` and every process of it (its raylet, its actors)."""
        kill_tree(self.workers[index])

    def stop(self) -> None:
        """Kill every process of the cluster and remove its temporary directory."""
        for process in [*self.workers, *([self.head] if self.head else [])]:
            if process.poll() is None or descendants(process.pid):
                kill_tree(process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
