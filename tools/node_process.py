"""Run ``ainode serve`` as a subprocess on free local ports (for e2e tests, demo, benchmarks).

:class:`NodeProcess` merges the caller's configuration over development defaults (free
ports, a data directory in a work directory, short completion delays), writes it as
YAML, starts ``python -m node serve --config FILE`` with ``TCP_NODELAY=1`` and waits for
``GET /healthz`` to answer 200. Output goes to a log file in the work directory; on a
failed start the error carries the log's tail.

Examples
--------
>>> config = {
...     "destinations": {"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}},
...     "rules": [{"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs",
...                "send_to": ["pacs"]}],
... }
>>> with NodeProcess(config) as node:
...     print(node.ae_title, node.dicom_port, node.url)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from tools import machine
from tools.local_process import LocalProcess
from tools.net import LOCALHOST, free_ports, tail

log = logging.getLogger(__name__)

#: The directory that holds the ``node`` package (the repository root in a checkout).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: Log fragments that mean "a port was taken between picking and binding".
_PORT_CLASH = ("Address already in use", "Errno 98", "EADDRINUSE")


class NodeStartError(RuntimeError):
    """The node did not answer ``/healthz`` (the message holds its log tail)."""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: mappings recursively, other values replace."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def default_config(data_dir: Path, dicom_port: int, http_port: int) -> dict[str, Any]:
    """Development defaults: local ports, no rules, a 2 s completion quiet period."""
    return {
        "node": {
            "ae_title": "AINODE",
            "dicom_port": dicom_port,
            "http_port": http_port,
            "bind_address": LOCALHOST,
            "data_dir": str(data_dir),
        },
        "completion": {"series_quiet_seconds": 2.0, "poll_seconds": 0.2},
        "destinations": {},
        "rules": [],
    }


class NodeProcess(LocalProcess):
    """An ``ainode serve`` subprocess (a context manager).

    Parameters
    ----------
    config
        Configuration merged over :func:`default_config`; ports given here are kept,
        missing ones are picked free.
    workdir
        Holds the YAML configuration, the log and (unless the config names another)
        the data directory. A temporary directory, removed on exit, when omitted.
    startup_timeout
        Seconds to wait for ``/healthz`` (importing torch takes a while on a small CPU).
    wait_for_routines
        Also wait until ``/healthz`` reports the routines loaded (the node answers before
        it has imported them); False returns as soon as the listener and API are up.
    python
        Interpreter that runs ``-m node``.
    env
        Extra environment variables for the node. Inherited ``AINODE_*`` variables are
        dropped so the generated file is the whole configuration.
    cwd
        Working directory of the node (default: the checkout). A ``python`` of another
        install must run outside the checkout, or ``-m node`` imports the checkout's code.
    https_ca
        CA file that the node's HTTPS certificate (``node.https``) is verified against.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        workdir: Path | None = None,
        startup_timeout: float = 120.0,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        cwd: Path = PROJECT_ROOT,
        https_ca: Path | None = None,
        wait_for_routines: bool = True,
    ) -> None:
        self._cwd = cwd
        self._wait_for_routines = wait_for_routines
        #: Verifies the node's HTTPS certificate (``node.https``) against this CA file.
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(https_ca)) if https_ca else True
        )
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="ainode-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._user_config = dict(config or {})
        user_node = self._user_config.get("node", {})
        self._fixed_ports = "dicom_port" in user_node and "http_port" in user_node
        self.config_path = self.workdir / "ainode.yaml"
        self.log_path = self.workdir / "node.log"
        self._startup_timeout = startup_timeout
        self._python = python
        self._extra_env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self.config: dict[str, Any] = {}
        self._resolve_config()

    def _resolve_config(self) -> None:
        dicom_port, http_port = free_ports(2)
        defaults = default_config(self.workdir / "data", dicom_port, http_port)
        self.config = deep_merge(defaults, self._user_config)

    # -- what the node looks like from outside ----------------------------------------
    @property
    def ae_title(self) -> str:
        return str(self.config["node"]["ae_title"])

    @property
    def dicom_port(self) -> int:
        return int(self.config["node"]["dicom_port"])

    @property
    def http_port(self) -> int:
        return int(self.config["node"]["http_port"])

    @property
    def url(self) -> str:
        scheme = "https" if self.config["node"].get("https") else "http"
        return f"{scheme}://{LOCALHOST}:{self.http_port}"

    @property
    def data_dir(self) -> Path:
        path = Path(self.config["node"]["data_dir"])
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def pid(self) -> int | None:
        """The node's process id while it runs (for sampling /proc/<pid>)."""
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- life cycle -----------------------------------------------------------------
    _start_error = NodeStartError

    def _retry_on_new_ports(self, error: Exception, attempt: int) -> bool:
        if not any(marker in str(error) for marker in _PORT_CLASH):
            return False
        log.warning("node_port_clash attempt=%d action=retry_with_new_ports", attempt)
        self._resolve_config()
        return True

    def _launch(self) -> None:
        """Start ``ainode serve`` and wait until ``/healthz`` answers 200 (with the
        routines loaded, unless ``wait_for_routines`` is False)."""
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), "utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
        env.update({"TCP_NODELAY": "1", "PYTHONUNBUFFERED": "1", **self._extra_env})
        command = [self._python, "-m", "node", "serve", "--config", str(self.config_path)]
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self._cwd,
                start_new_session=True,
            )
        before = machine.sample()
        started = before.at
        deadline = started + self._startup_timeout
        with httpx.Client(timeout=2.0, verify=self.verify) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise NodeStartError(
                        f"node exited with status {self._process.returncode} while starting; "
                        f"log {self.log_path} tail:\n{tail(self.log_path)}"
                    )
                try:
                    health = client.get(f"{self.url}/healthz")
                    loaded = health.status_code == 200 and (
                        not self._wait_for_routines
                        or health.json().get("routines", "loaded") == "loaded"
                    )
                    if loaded:
                        log.info(
                            "node_started pid=%s dicom_port=%s http_port=%s seconds=%.2f",
                            self._process.pid,
                            self.dicom_port,
                            self.http_port,
                            time.monotonic() - started,
                        )
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise NodeStartError(
            f"node did not answer /healthz within {self._startup_timeout:.0f} s (process "
            f"{machine.process_state(self._process.pid)}; machine {machine.since(before)}); "
            f"log {self.log_path} tail:\n{tail(self.log_path)}"
        )

    def _terminate(self, grace: float = 20.0) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("node_kill pid=%s reason=no_exit_after_sigterm", process.pid)
                self._signal_group(process, signal.SIGKILL)
                process.wait(timeout=grace)
        return process.returncode

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
        # The node runs in its own session: signal its group so workers it spawned stop too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    def stop(self) -> int | None:
        """Stop the node (SIGTERM to its process group, SIGKILL after 20 s).

        Returns its exit status (None if it was not running). A temporary work
        directory is removed.
        """
        code = self._terminate()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    # -- talking to it --------------------------------------------------------------
    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        """``GET`` a node API path and return the decoded JSON (raises on HTTP errors)."""
        response = httpx.get(f"{self.url}{path}", timeout=timeout, verify=self.verify)
        response.raise_for_status()
        return response.json()

    def healthz(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/healthz")
        return result

    def log_text(self) -> str:
        """The whole log so far (for parsing timing lines)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


__all__ = ["PROJECT_ROOT", "NodeProcess", "NodeStartError", "deep_merge", "default_config"]
