"""A development Orthanc: start Debian's binary on local ports and talk to its REST API.

:class:`OrthancClient` wraps the few REST calls the demo, benchmarks and tests need;
:class:`OrthancServer` is a client that also owns an Orthanc process (a context
manager): it writes a configuration into a working directory (storage, index and log
live there), starts ``/usr/sbin/Orthanc`` with ``TCP_NODELAY=1``, waits until
``/system`` answers and stops it with SIGTERM (then SIGKILL) on exit.

Examples
--------
>>> with OrthancServer(modalities={"ainode": ["AINODE", "127.0.0.1", 11112]}) as pacs:
...     instance_id = pacs.upload(Path("ct.dcm"))
...     pacs.send_to_modality("ainode", [instance_id])
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pydicom

from tools.local_process import LocalProcess
from tools.net import LOCALHOST, free_ports, tail, wait_until

log = logging.getLogger(__name__)

T = TypeVar("T")

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

DicomSource = Path | str | bytes | pydicom.Dataset


class OrthancError(RuntimeError):
    """Orthanc answered an error, or did not start."""


class OrthancClient:
    """The REST calls the development tools need, over one :class:`httpx.Client`.

    Parameters
    ----------
    url
        Orthanc's base URL, e.g. ``http://127.0.0.1:8042``.
    timeout
        Seconds for ordinary requests; synchronous sends get their own timeout.
    credentials
        ``(username, password)`` for an Orthanc with ``AuthenticationEnabled`` (HTTP
        basic authentication).
    """

    def __init__(
        self, url: str, *, timeout: float = 60.0, credentials: tuple[str, str] | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.credentials = credentials
        self._http = httpx.Client(base_url=self.url, timeout=timeout, auth=credentials)

    def close(self) -> None:
        self._http.close()

    # -- plumbing -------------------------------------------------------------------
    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise OrthancError(
                f"{response.request.method} {response.request.url.path} -> "
                f"{response.status_code}: {response.text[:2000]}"
            )
        return response

    def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self._check(self._http.get(path, params=params)).json()

    def post_json(self, path: str, body: Any, *, timeout: float | None = None) -> Any:
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        response = self._check(self._http.post(path, json=body, **kwargs))
        return response.json() if response.content else None

    def is_up(self) -> bool:
        """True when ``/system`` answers 200."""
        try:
            return self._http.get("/system", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def system(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/system")
        return result

    # -- storing --------------------------------------------------------------------
    def upload(self, source: DicomSource) -> str:
        """Store one DICOM instance over REST and return its Orthanc instance id.

        ``source`` is a file path, the file's bytes or a pydicom dataset.
        """
        if isinstance(source, pydicom.Dataset):
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, source, enforce_file_format=True)
            data = buffer.getvalue()
        elif isinstance(source, bytes):
            data = source
        else:
            data = Path(source).read_bytes()
        response = self._check(
            self._http.post(
                "/instances", content=data, headers={"Content-Type": "application/dicom"}
            )
        )
        answer = response.json()
        if isinstance(answer, list):  # Orthanc answers a list for a ZIP upload
            raise OrthancError("upload() takes one instance; Orthanc received several")
        instance_id: str = answer["ID"]
        return instance_id

    def upload_many(self, sources: Iterable[DicomSource]) -> list[str]:
        """Upload several instances one by one; return their instance ids in order."""
        return [self.upload(source) for source in sources]

    def delete(self, level: str, resource_id: str) -> None:
        """Delete a resource, ``level`` being ``patients``/``studies``/``series``/``instances``."""
        self._check(self._http.delete(f"/{level}/{resource_id}"))

    # -- browsing -------------------------------------------------------------------
    def studies(self) -> list[str]:
        """Orthanc ids of all studies."""
        result: list[str] = self.get_json("/studies")
        return result

    def study_info(self, study_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(f"/studies/{study_id}")
        return result

    def series_of_study(self, study_id: str) -> list[dict[str, Any]]:
        """The expanded series resources of a study."""
        result: list[dict[str, Any]] = self.get_json(f"/studies/{study_id}/series")
        return result

    def series_info(self, series_id: str) -> dict[str, Any]:
        """One series: ``MainDicomTags``, ``Instances``, ``IsStable``, ``ParentStudy``…"""
        result: dict[str, Any] = self.get_json(f"/series/{series_id}")
        return result

    def instances(self, series_id: str) -> list[dict[str, Any]]:
        """The expanded instance resources of a series."""
        result: list[dict[str, Any]] = self.get_json(f"/series/{series_id}/instances")
        return result

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file, byte for byte."""
        return self._check(self._http.get(f"/instances/{instance_id}/file")).content

    def instance_dataset(self, instance_id: str) -> pydicom.Dataset:
        """The stored DICOM file parsed by pydicom."""
        return pydicom.dcmread(io.BytesIO(self.instance_file(instance_id)))

    def lookup_study(self, study_uid: str) -> str | None:
        """The Orthanc id of the study with this Study Instance UID, if stored."""
        return self._lookup(study_uid, "Study")

    def lookup_series(self, series_uid: str) -> str | None:
        """The Orthanc id of the series with this Series Instance UID, if stored."""
        return self._lookup(series_uid, "Series")

    def _lookup(self, uid: str, kind: str) -> str | None:
        response = self._check(self._http.post("/tools/lookup", content=uid.encode()))
        for match in response.json():
            if match.get("Type") == kind:
                found: str = match["ID"]
                return found
        return None

    def find_series(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """Expanded series of the study ``study_uid``, optionally of one modality."""
        query = {"StudyInstanceUID": study_uid}
        if modality is not None:
            query["Modality"] = modality
        result: list[dict[str, Any]] = self.post_json(
            "/tools/find", {"Level": "Series", "Query": query, "Expand": True}
        )
        return result

    def wait_for_series(
        self,
        study_uid: str,
        modalities: Sequence[str],
        timeout: float,
        *,
        stable: bool = False,
        interval: float = 0.25,
    ) -> dict[str, list[dict[str, Any]]]:
        """Wait until the study has at least one series of each modality.

        With ``stable`` the series must also be stable (no new instance for
        ``StableAge`` seconds). Returns ``{modality: [series, ...]}``.
        """

        def ready() -> dict[str, list[dict[str, Any]]] | None:
            found = {m: self.find_series(study_uid, m) for m in modalities}
            if not all(found.values()):
                return None
            if stable and not all(s.get("IsStable") for v in found.values() for s in v):
                return None
            return found

        wanted = "+".join(modalities)
        return self.wait_for(ready, timeout, interval=interval, message=f"{wanted} series")

    # -- DICOM network --------------------------------------------------------------
    def modalities(self) -> list[str]:
        result: list[str] = self.get_json("/modalities")
        return result

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare (or replace) a DICOM modality, e.g. a node started after Orthanc."""
        body = {"AET": aet, "Host": host, "Port": port}
        self._check(self._http.put(f"/modalities/{name}", json=body))

    def echo_modality(self, name: str) -> bool:
        """C-ECHO a declared modality; True on success."""
        response = self._http.post(f"/modalities/{name}/echo", json={})
        return response.status_code == 200

    def send_to_modality(
        self,
        modality: str,
        resources: Sequence[str],
        *,
        synchronous: bool = True,
        timeout: float = 600.0,
    ) -> dict[str, Any]:
        """C-STORE resources (any level) to a declared modality.

        Synchronously, Orthanc answers once the association is done (instance counts,
        failures); otherwise it answers a job ``{"ID": ..., "Path": ...}`` at once.
        """
        body = {"Resources": list(resources), "Synchronous": synchronous}
        result: dict[str, Any] = self.post_json(
            f"/modalities/{modality}/store", body, timeout=timeout
        )
        return result

    # -- polling --------------------------------------------------------------------
    @staticmethod
    def wait_for(
        predicate: Callable[[], T | None],
        timeout: float,
        *,
        interval: float = 0.25,
        message: str = "condition",
    ) -> T:
        """Poll ``predicate`` until it returns something truthy; return that value."""
        return wait_until(predicate, timeout, interval=interval, message=message)

    def explorer_url(self, level: str, resource_id: str) -> str:
        """Orthanc Explorer page of a resource (``study``, ``series``, ``instance``…)."""
        return f"{self.url}/app/explorer.html#{level}?uuid={resource_id}"


class OrthancServer(OrthancClient, LocalProcess):
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
        API and DICOMweb, and this client authenticates with them.
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
        startup_timeout: float = 30.0,
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
        super().__init__(f"http://{LOCALHOST}:{self.http_port}", credentials=credentials)

    @classmethod
    def from_config_file(
        cls, config_file: Path, *, log_dir: Path, startup_timeout: float = 30.0
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
        self._http.close()
        OrthancClient.__init__(
            self, f"http://{LOCALHOST}:{self.http_port}", credentials=self.credentials
        )
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
        started = time.monotonic()
        deadline = started + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with status {self._process.returncode} while starting "
                    f"(http={self.http_port} dicom={self.dicom_port}); log tail:\n"
                    f"{tail(self.log_path)}"
                )
            if self.is_up():
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
            f"Orthanc did not answer /system within {self._startup_timeout:.0f} s; "
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
        self.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


__all__ = [
    "AINODE_PLUGIN_SCRIPT",
    "BASE_CONFIG",
    "DICOMWEB_PLUGIN",
    "ORTHANC_BINARY",
    "PYTHON_PLUGIN",
    "OrthancClient",
    "OrthancError",
    "OrthancServer",
]
