"""Destination kinds come from one registry (``node.export.senders.SENDERS``).

A third kind, registered here in the test (a folder the results are copied into), is
accepted by the configuration schema, the admin API and console, and used by the
exporter; no other module of the node names it. The built-in senders report what the
destination acknowledged per instance and the status of a refusal.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from node.admin.destinations import destination_kinds, parse_destination
from node.config import DestinationSettings, DicomWebDestinationSettings, settings_from_mapping
from node.config.destinations import DestinationBase
from node.errors import ConfigError, ExportError, InvalidInput
from node.export.dimse import send_files
from node.export.exporter import Exporter
from node.export.sender import (
    Acknowledgement,
    DestinationForm,
    FormField,
    ProbeAnswer,
    SenderKind,
)
from node.export.senders import SENDERS, register, sender_for, unregister
from node.export.stow import stow_files
from node.state.destinations import DestinationStore
from node.state.jobs import JobQueue
from tests.support.admin import ADMIN_PASSWORD, ServedNode, login_session, served_node
from tests.support.jobs import job_with_results
from tests.support.net import free_port
from tools.synthetic.chest_ct import make_chest_ct, write_series

ROOT = Path(__file__).resolve().parents[1]


class FolderDestination(DestinationBase):
    """A directory the results are copied into (``kind: folder``)."""

    kind: Literal["folder"]
    path: Path
    #: Test knob: acknowledge only this many files (a destination that loses some).
    acknowledge_at_most: int | None = None

    def peer(self) -> str:
        return f"folder {self.path}"


class FolderSender:
    def __init__(self, destination: FolderDestination, calling_ae: str) -> None:
        self.destination = destination

    def send(self, paths: Sequence[Path]) -> list[Acknowledgement]:
        self.destination.path.mkdir(parents=True, exist_ok=True)
        acknowledged = []
        for path in paths[: self.destination.acknowledge_at_most]:
            shutil.copyfile(path, self.destination.path / path.name)
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            acknowledged.append(Acknowledgement(path, str(uid)))
        return acknowledged

    def probe(self) -> ProbeAnswer:
        if not self.destination.path.is_dir():
            raise ExportError(f"{self.destination.path} is not a directory")
        return ProbeAnswer(0, f"{self.destination.path} is writable")


FOLDER = SenderKind(
    name="folder",
    settings=FolderDestination,
    open=FolderSender,
    form=DestinationForm(
        label="Folder",
        summary="A directory the result files are copied into.",
        fields=(FormField("path", "Directory", required=True, width="grow"),),
        test_label="Test (folder)",
    ),
)


@pytest.fixture
def folder_kind() -> Iterator[SenderKind]:
    register(FOLDER)
    try:
        yield FOLDER
    finally:
        unregister("folder")


@pytest.fixture(scope="module")
def result_files(tmp_path_factory) -> list[Path]:
    datasets, _ = make_chest_ct(n_slices=20, rows=64, columns=64, seed=7)
    return write_series(datasets[:3], tmp_path_factory.mktemp("results"))


def folder_config(path: Path, **values: object) -> dict[str, object]:
    return {
        "destinations": {"out": {"kind": "folder", "path": str(path), **values}},
        "rules": [
            {"name": "r", "match": {"Modality": "CT"}, "plugin": "ct_lungs", "send_to": ["out"]}
        ],
    }


def test_built_in_kinds_are_registered() -> None:
    assert {"dimse", "dicomweb"} <= set(SENDERS)
    assert [k["name"] for k in destination_kinds()][:1] == ["dimse"]  # the default first


def test_an_unregistered_kind_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"destinations\.out: unknown destination kind 'folder'"):
        settings_from_mapping(folder_config(tmp_path), environ={})
    with pytest.raises(InvalidInput) as refused:
        parse_destination({"kind": "folder", "path": str(tmp_path)})
    assert refused.value.problems[0][0] == "kind"
    assert "known: dicomweb, dimse" in refused.value.problems[0][1]


def test_a_registered_kind_is_accepted_by_the_configuration(
    folder_kind: SenderKind, tmp_path: Path
) -> None:
    settings = settings_from_mapping(folder_config(tmp_path, results=["sc"]), environ={})
    out = settings.destinations["out"]
    assert isinstance(out, FolderDestination) and out.path == tmp_path
    assert out.result_tags == {"sc"} and out.give_up_after_seconds == 86400  # shared fields
    with pytest.raises(ConfigError, match=r"destinations\.out\.host: unknown key"):
        settings_from_mapping(folder_config(tmp_path, host="pacs"), environ={})
    with pytest.raises(ConfigError, match=r"destinations\.out\.path: Field required"):
        settings_from_mapping({"destinations": {"out": {"kind": "folder"}}}, environ={})
    # The other kinds still validate as before, with or without their ``kind`` key.
    dimse = {"ae_title": "PACS", "host": "h", "port": 104}
    both = settings_from_mapping(
        {"destinations": {"a": dimse, "b": {**dimse, "kind": "dimse"}}}, environ={}
    )
    assert both.destinations["a"] == both.destinations["b"]
    assert isinstance(both.destinations["a"], DestinationSettings)


def test_the_exporter_sends_with_the_registered_kind(
    folder_kind: SenderKind, database, clock, tmp_path: Path, result_files: list[Path]
) -> None:
    settings = settings_from_mapping(folder_config(tmp_path / "out"), environ={})
    queue = JobQueue(database)
    exporter = Exporter(queue, lambda: settings.destinations, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, result_files[0].parent, destinations=["out"])
    assert exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "done", job.error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in result_files
    )
    assert [e.event for e in queue.events(job_id)][-2:] == ["sent", "done"]
    assert exporter.sent_counts()[("out", "objects")] == len(result_files)


def test_files_the_destination_did_not_acknowledge_are_not_counted_as_sent(
    folder_kind: SenderKind, database, clock, tmp_path: Path, result_files: list[Path]
) -> None:
    """A sender that returns without acknowledging every file leaves the job waiting to
    retry, with what was missing; it never records ``sent``."""
    config = folder_config(tmp_path / "out", acknowledge_at_most=1, max_attempts=2)
    settings = settings_from_mapping(config, environ={})
    queue = JobQueue(database)
    exporter = Exporter(queue, lambda: settings.destinations, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, result_files[0].parent, destinations=["out"])
    assert exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "exporting" and list(job.pending_destinations) == ["out"]
    assert f"acknowledged 1 of {len(result_files)} result files" in (job.error or "")
    assert "sent" not in [e.event for e in queue.events(job_id)]
    assert exporter.sent_counts() == {}


def test_sender_for_and_the_probe_come_from_the_kind(
    folder_kind: SenderKind, tmp_path: Path
) -> None:
    destination = parse_destination({"kind": "folder", "path": str(tmp_path)})
    sender = sender_for(destination, calling_ae="AINODE")
    assert isinstance(sender, FolderSender)
    assert sender.probe() == ProbeAnswer(0, f"{tmp_path} is writable")


def test_the_destination_store_keeps_a_registered_kind(
    folder_kind: SenderKind, database, tmp_path: Path
) -> None:
    store = DestinationStore(database)
    destination = parse_destination({"kind": "folder", "path": str(tmp_path)})
    store.put("out", destination, "admin", 1.0, create=True)
    assert store.get("out") == destination


class RefusingSCP:
    """A pynetdicom storage SCP answering each C-STORE with the next status of ``statuses``."""

    def __init__(self, statuses: list[int]) -> None:
        self.port = free_port()
        self.statuses = statuses
        self.ae = AE(ae_title="PACS")
        self.ae.add_supported_context(
            "1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        self._lock = threading.Lock()
        #: Associations accepted, and the SOP Instance UIDs stored in each.
        self.associations: list[list[str]] = []

    def _accepted(self, event: evt.Event) -> None:
        with self._lock:
            self.associations.append([])

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            status = self.statuses.pop(0)
            if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
                self.associations[-1].append(str(event.request.AffectedSOPInstanceUID))
            return status

    def __enter__(self) -> RefusingSCP:
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)]
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=handlers
        )
        return self

    def __exit__(self, *args: object) -> None:
        self.server.shutdown()


def pacs(port: int) -> DestinationSettings:
    """A destination for :class:`RefusingSCP`, over one association: its statuses are
    answered in the order the C-STOREs arrive (the default, 2 at once, is
    tests/test_export_associations.py's)."""
    return DestinationSettings(
        ae_title="PACS", host="127.0.0.1", port=port, timeout_seconds=5, associations=1
    )


def test_c_store_acknowledges_each_instance_with_its_status(result_files: list[Path]) -> None:
    with RefusingSCP([0x0000, 0xB000, 0x0000]) as scp:
        acknowledged = send_files(pacs(scp.port), result_files, calling_ae="AINODE")
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in result_files]
    assert [(a.path, a.sop_instance_uid, a.status) for a in acknowledged] == [
        (result_files[0], uids[0], 0x0000),
        (result_files[1], uids[1], 0xB000),  # a warning: stored, and said so
        (result_files[2], uids[2], 0x0000),
    ]


def test_a_job_goes_to_each_destination_over_one_association(
    database, clock, result_files: list[Path]
) -> None:
    """All of a job's result files reach each destination in a single association."""
    with RefusingSCP([0] * 3) as first, RefusingSCP([0] * 3) as second:
        settings = {"a": pacs(first.port), "b": pacs(second.port)}
        queue = JobQueue(database)
        exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
        job_id = job_with_results(queue, clock, result_files[0].parent, destinations=["a", "b"])
        assert exporter.run_once()
    assert queue.get(job_id).state == "done"
    uids = sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in result_files
    )
    for scp in (first, second):
        assert len(scp.associations) == 1
        assert sorted(scp.associations[0]) == uids


def test_a_job_is_not_sent_until_the_destination_acknowledged_every_file(
    database, clock, result_files: list[Path]
) -> None:
    """The last file refused over C-STORE: the job waits to retry, never ``sent``."""
    with RefusingSCP([0x0000, 0x0000, 0xA700]) as scp:
        settings = {"a": pacs(scp.port)}
        queue = JobQueue(database)
        exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
        job_id = job_with_results(queue, clock, result_files[0].parent, destinations=["a"])
        assert exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "exporting" and list(job.pending_destinations) == ["a"]
    assert "0xA700" in (job.error or "")
    assert "sent" not in [e.event for e in queue.events(job_id)]
    assert exporter.sent_counts() == {}


def test_a_refused_c_store_raises_with_its_dicom_status(result_files: list[Path]) -> None:
    with RefusingSCP([0x0000, 0xA700]) as scp, pytest.raises(ExportError) as refused:
        send_files(pacs(scp.port), result_files[:2], calling_ae="AINODE")
    assert refused.value.status == 0xA700
    assert "status 0xA700" in str(refused.value)


def test_an_unreachable_destination_raises_without_a_status(result_files: list[Path]) -> None:
    with pytest.raises(ExportError) as refused:
        send_files(pacs(free_port()), result_files[:1], calling_ae="AINODE")
    assert refused.value.status is None


@pytest.fixture
def served(folder_kind: SenderKind, tmp_path: Path) -> Iterator[ServedNode]:
    with served_node(tmp_path / "node") as node:
        yield node


@pytest.mark.slow
def test_the_console_and_api_offer_a_registered_kind(served: ServedNode, tmp_path: Path) -> None:
    """A node in this process (real HTTP) takes the folder kind through the API, lists it
    in the console's kind selector with its own fields, and probes it with its sender."""
    target = tmp_path / "copies"
    target.mkdir()
    with served.client(served.admin_token) as client:
        created = client.post("/api/destinations/out", json={"kind": "folder", "path": str(target)})
        assert created.status_code == 201, created.text
        assert created.json()["kind"] == "folder"
        echo = client.post("/api/destinations/out/echo").json()
        assert echo["ok"] and echo["message"] == f"{target} is writable"
        bad = client.post("/api/destinations/bad", json={"kind": "ftp", "path": "/x"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "kind"
        assert "folder" in bad.json()["errors"][0]["message"]
    page_client, _ = login_session(served.url, "admin", ADMIN_PASSWORD)
    page = page_client.get("/destinations").text
    page_client.close()
    options = re.findall(r'<option value="([a-z]+)">', page)
    assert options == ["dimse", "dicomweb", "folder"]
    folder_fields = re.search(r'<fieldset[^>]*data-kind="folder".*?</fieldset>', page, re.S)
    assert folder_fields and 'data-field="path"' in folder_fields.group(0)
    assert "ae_title" not in folder_fields.group(0)  # only the folder kind's own fields
    row = re.search(r'<tr data-destination="out".*?</tr>', page, re.S)
    assert row and "Folder" in row.group(0) and f"folder {target}" in row.group(0)
    assert "Test (folder)" in row.group(0)


@pytest.mark.slow
def test_the_cli_lists_the_registered_kinds() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "node", "destinations", "kinds"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:1] == ["dimse"] and "ae_title*" in lines[0]
    assert lines[1].split()[:1] == ["dicomweb"] and "url*" in lines[1]


class StowServer:
    """A plain HTTP server answering every STOW-RS request with ``status`` and ``body``."""

    def __init__(self, status: int, body: dict[str, object] | None = None) -> None:
        answer = (status, json.dumps(body).encode() if body is not None else b"")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(answer[0])
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(answer[1])))
                self.end_headers()
                self.wfile.write(answer[1])

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def __enter__(self) -> StowServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *args: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def web(url: str) -> DicomWebDestinationSettings:
    return DicomWebDestinationSettings.model_validate({"kind": "dicomweb", "url": url})


def referenced(uid: str, warning: int | None = None) -> dict[str, object]:
    item: dict[str, object] = {"00081155": {"vr": "UI", "Value": [uid]}}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return item


def test_stow_rs_acknowledges_what_the_response_lists(result_files: list[Path]) -> None:
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in result_files]
    listed = {"00081199": {"vr": "SQ", "Value": [referenced(uids[0]), referenced(uids[2], 0xB000)]}}
    with StowServer(200, listed) as server:
        acknowledged = stow_files(web(server.url), result_files)
    # The instance the response leaves out is not acknowledged (the exporter retries it).
    assert [(a.path, a.sop_instance_uid, a.status) for a in acknowledged] == [
        (result_files[0], uids[0], 0),
        (result_files[2], uids[2], 0xB000),
    ]


def test_a_refused_stow_rs_raises_with_its_http_status(result_files: list[Path]) -> None:
    with StowServer(403) as server, pytest.raises(ExportError) as refused:
        stow_files(web(server.url), result_files[:1])
    assert refused.value.status == 403
    assert "answered HTTP 403" in str(refused.value)
