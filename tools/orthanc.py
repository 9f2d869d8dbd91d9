"""A development Orthanc: start Debian's binary on local ports.

:class:`OrthancServer` owns an Orthanc process (a context manager): it writes a
configuration into a working directory (storage, index and log live there), starts
``/usr/sbin/Orthanc`` with ``TCP_NODELAY=1``, waits until ``/system`` answers and stops
it with SIGTERM (then SIGKILL) on exit. Its :attr:`~OrthancServer.client` is a
:class:`pyorthanc.Orthanc` REST client; :mod:`tools.orthanc_rest` has the
helpers several callers share.

Examples
--------
>>> with OrthancServer(modalities={"ainode": ["AINODE", "127.0.0.1", 11112]}) as pacs:
...     instance_id = upload(pacs.client, Path("ct.dcm"))
...     send_to_modality(pacs.client, "ainode", [instance_id])
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyorthanc

from tools import machine
from tools.local_process import LocalProcess
from tools.net import LOCALHOST, free_ports, tail
from tools.orthanc_rest import connect, is_up

log = logging.getLogger(__name__)

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
#: ainode's Orthanc plugin (``PythonScript`` in Orthanc's configuration).
AINODE_PLUGIN_SCRIPT = Path(__file__).resolve().parents[1] / "orthanc" / "ainode_plugin.py"

#: Settings of a test/benchmark Orthanc; ports, AET, storage and modalities are added.
BASE_CONFIG: dict[str, Any] = {
    "Name": "ainode-test-pacs",
    "RemoteAccessAllowed": False,
    "AuthenticationEnabled": False,
    "HttpCompressionEnabled": False,
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    "DicomCheckCalledAet": False,
    "DicomAlwaysAllowEcho": True,
    "DicomAlwaysAllowStore": True,
    "DicomCheckModalityHost": False,
    "MaximumPduLength": 131072,
    # Close outgoing associations as soon as a send job ends (the node may use the
    # release as a hint that a series is complete).
    "DicomAssociationCloseDelay": 0,
    "DicomScuTimeout": 30,
    "StableAge": 2,
    # A result re-sent with the same SOP Instance UID replaces the stored one.
    "OverwriteInstances": True,
    # Throw-away storage: no fsync per file.
    "SyncStorageArea": False,
    "SaveJobs": False,
    "JobsHistorySize": 100,
    "DeidentifyLogs": True,
}


#: Orthanc starts in under a second; a shared CI machine has stalled every process for
#: over 30 s (the error then says so, from :mod:`tools.machine`).
STARTUP_TIMEOUT = 120.0
#: A REST call to it: as long, for the same reason (a stalled call failed CI at 60 s).
REQUEST_TIMEOUT = 120.0


class OrthancError(RuntimeError):
    """Orthanc answered an error, or did not start."""


class OrthancServer(LocalProcess):
    """An Orthanc process on local ports with its own storage (a context manager).

    Parameters
    ----------
    aet
        Orthanc's DICOM AE title.
    modalities
        ``DicomModalities``: ``{name: [AET, host, port]}``.
    http_port, dicom_port
        Fixed ports; free ones are picked when omitted (and re-picked if Orthanc
        cannot bind them).
    workdir
        Where the configuration, storage and log go; a temporary directory removed on
        exit when omitted.
    config_overrides
        Extra configuration keys, applied last.
    credentials
        ``(username, password)``: Orthanc requires HTTP basic authentication
        (``AuthenticationEnabled``, with this one ``RegisteredUsers`` entry) on its REST
        API and DICOMweb, and :attr:`client` authenticates with them.
    config_file
        Use this configuration file as it is (ports and AET are read from it) instead
        of generating one; see :meth:`from_config_file`.
    graceful_stop
        Stop with SIGTERM and wait (Orthanc needs ~3.5 s to shut down) rather than
        SIGKILL at once. Default: graceful unless the storage is a temporary directory
        that is deleted on exit anyway.
    """

    def __init__(
        self,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, Sequence[Any]] | None = None,
        http_port: int | None = None,
        dicom_port: int | None = None,
        workdir: Path | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        credentials: tuple[str, str] | None = None,
        config_file: Path | None = None,
        binary: str = ORTHANC_BINARY,
        plugins: Sequence[str] = (DICOMWEB_PLUGIN,),
        startup_timeout: float = STARTUP_TIMEOUT,
        graceful_stop: bool | None = None,
    ) -> None:
        self._fixed_ports = http_port is not None and dicom_port is not None
        self._config_file = config_file
        if config_file is not None:
            settings = json.loads(config_file.read_text(encoding="utf-8"))
            aet = settings.get("DicomAet", "ORTHANC")
            http_port = int(settings.get("HttpPort", 8042))
            dicom_port = int(settings.get("DicomPort", 4242))
            self._fixed_ports = True
        picked = free_ports(2)
        self.http_port: int = http_port if http_port is not None else picked[0]
        self.dicom_port: int = dicom_port if dicom_port is not None else picked[1]
        self.aet = aet
        self.dicom_modalities = {k: list(v) for k, v in (modalities or {}).items()}
        self._overrides = dict(config_overrides or {})
        self._binary = binary
        self._plugins = list(plugins)
        self._startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self._graceful_stop = not self._own_workdir if graceful_stop is None else graceful_stop
        self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "orthanc.log"
        self.config_path = config_file if config_file is not None else self.workdir / "orthanc.json"
        self._process: subprocess.Popen[bytes] | None = None
        self.credentials = credentials
        #: Orthanc's REST API (a :class:`pyorthanc.Orthanc`, an httpx client).
        self.client: pyorthanc.Orthanc = connect(
            self.url, credentials=credentials, timeout=REQUEST_TIMEOUT
        )

    @property
    def url(self) -> str:
        """Orthanc's base URL, e.g. ``http://127.0.0.1:8042``."""
        return f"http://{LOCALHOST}:{self.http_port}"

    @classmethod
    def from_config_file(
        cls, config_file: Path, *, log_dir: Path, startup_timeout: float = STARTUP_TIMEOUT
    ) -> OrthancServer:
        """An Orthanc that runs ``config_file`` unchanged, logging into ``log_dir``."""
        return cls(config_file=config_file, workdir=log_dir, startup_timeout=startup_timeout)

    def config(self) -> dict[str, Any]:
        """The configuration this server is started with."""
        if self._config_file is not None:
            loaded: dict[str, Any] = json.loads(self._config_file.read_text(encoding="utf-8"))
            return loaded
        storage = str(self.workdir / "storage")
        settings: dict[str, Any] = {
            **BASE_CONFIG,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "Plugins": self._plugins,
            "DicomModalities": self.dicom_modalities,
        }
        if self.credentials is not None:
            username, password = self.credentials
            settings["AuthenticationEnabled"] = True
            settings["RegisteredUsers"] = {username: password}
        settings.update(self._overrides)
        return settings

    _start_error = OrthancError

    def _retry_on_new_ports(self, error: Exception, attempt: int) -> bool:
        # Most likely a port taken between picking and binding: pick again.
        self.http_port, self.dicom_port = free_ports(2)
        self.client.close()
        self.client = connect(self.url, credentials=self.credentials, timeout=REQUEST_TIMEOUT)
        return True

    def _launch(self) -> None:
        """Start Orthanc and wait until its REST API answers."""
        if self._config_file is None:
            self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        env = {**os.environ, "TCP_NODELAY": "1"}
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [self._binary, str(self.config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        before = machine.sample()
        started = before.at
        deadline = started + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with status {self._process.returncode} while starting "
                    f"(http={self.http_port} dicom={self.dicom_port}); log tail:\n"
                    f"{tail(self.log_path)}"
                )
            if is_up(self.client):
                log.info(
                    "orthanc_started pid=%s http_port=%s dicom_port=%s aet=%s seconds=%.2f",
                    self._process.pid,
                    self.http_port,
                    self.dicom_port,
                    self.aet,
                    time.monotonic() - started,
                )
                return
            time.sleep(0.05)
        raise OrthancError(
            f"Orthanc did not answer /system within {self._startup_timeout:.0f} s (process "
            f"{machine.process_state(self._process.pid)}; machine {machine.since(before)}); "
            f"log tail:\n{tail(self.log_path)}"
        )

    def _terminate(self, grace: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if not self._graceful_stop:
            process.kill()  # throw-away storage: nothing worth flushing
            process.wait(timeout=grace)
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("orthanc_kill pid=%s reason=no_exit_after_sigterm", process.pid)
            process.kill()
            process.wait(timeout=grace)

    def stop(self) -> None:
        """Stop Orthanc (see ``graceful_stop``) and remove a temporary workdir."""
        self._terminate()
        self.client.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


__all__ = [
    "AINODE_PLUGIN_SCRIPT",
    "BASE_CONFIG",
    "DICOMWEB_PLUGIN",
    "ORTHANC_BINARY",
    "PYTHON_PLUGIN",
    "OrthancError",
    "OrthancServer",
]
