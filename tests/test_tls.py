"""DICOM TLS (PS3.15 Annex B) and HTTPS with a throw-away PKI made by the test.

The node's TLS listener is exercised with dcmtk's ``echoscu``/``storescu --tls``, TLS
export with dcmtk's ``storescp +tls`` as the receiving peer, HTTPS with httpx.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from node.admin.destinations import parse_destination
from node.config import (
    DestinationSettings,
    DicomTlsClientSettings,
    HttpsSettings,
    settings_from_mapping,
)
from node.errors import ConfigError, ExportError, InvalidInput
from node.export.dimse import echo, send_files
from node.export.exporter import Exporter
from node.orchestration.ingest import Ingestor
from node.pull.remote import SourceError, query_series, retrieve_series
from node.spool import Spool
from node.state.db import Database
from node.state.destinations import DestinationStore
from node.state.jobs import JobQueue
from node.state.series import SeriesStore
from tests.support.admin import ADMIN_PASSWORD, served_node
from tests.support.browser import logged_in_page, needs_chromium
from tests.support.jobs import job_with_results
from tests.support.node import listening_node, stepped_settings
from tests.support.pki import Pki, make_pki
from tools.net import LOCALHOST, free_port, free_ports, port_is_free, wait_until
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import upload_many
from tools.synthetic.chest_ct import make_chest_ct, write_series


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def series_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    datasets, _ = make_chest_ct(n_slices=3, rows=32, columns=32, seed=11)
    return write_series(datasets, tmp_path_factory.mktemp("series"))


def _listener(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {
        "port": 2762,
        "certificate": str(pki.server.certificate),
        "private_key": str(pki.server.key),
        "ca_certificates": str(pki.ca.certificate),
        **extra,
    }


def _config_error(node: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"node": node}, source="ainode.yaml", environ={})
    return str(caught.value)


# -- configuration: the files are checked when the configuration loads --------------------


def test_listener_files_are_checked_at_load_with_the_key_named(pki: Pki, tmp_path: Path):
    missing = tmp_path / "nope.pem"
    message = _config_error({"tls": _listener(pki, certificate=str(missing))})
    assert "ainode.yaml: node.tls: certificate" in message and str(missing) in message
    assert "no such file" in message

    message = _config_error({"tls": _listener(pki, private_key=str(pki.client.key))})
    assert "node.tls: private_key" in message and "does not match the certificate" in message

    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    message = _config_error({"tls": _listener(pki, private_key=str(garbage))})
    assert "node.tls: private_key" in message and "not a usable PEM private key" in message

    message = _config_error({"tls": _listener(pki, ca_certificates=str(garbage))})
    assert "ca_certificates" in message and "no PEM certificate" in message

    message = _config_error(
        {"tls": _listener(pki, ca_certificates=None, require_client_certificate=True)}
    )
    assert "ca_certificates: needed to verify client certificates" in message

    assert "no tls listener" in _config_error({"plain_dicom": False})
    assert "also the plain dicom_port" in _config_error({"dicom_port": 2762, "tls": _listener(pki)})
    message = _config_error({"https": {"certificate": str(pki.server.certificate)}})
    assert "node.https.private_key" in message


def test_every_context_offers_tls_1_2_or_later_only(pki: Pki):
    listener = settings_from_mapping({"node": {"tls": _listener(pki)}}, environ={}).node.tls
    assert listener is not None
    client = DicomTlsClientSettings(ca_certificates=pki.ca.certificate)
    https = HttpsSettings(certificate=pki.server.certificate, private_key=pki.server.key)
    for context in (listener.context(), client.context(), https.context()):
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert listener.context().verify_mode is ssl.CERT_OPTIONAL  # verified if presented
    assert client.context().check_hostname


def test_destination_tls_is_part_of_the_destination_schema(pki: Pki, tmp_path: Path):
    """The admin API/console validate destinations with the config model: the optional
    ``tls`` key is accepted, shown, and its files are checked there too."""
    base = {"ae_title": "PACS", "host": LOCALHOST, "port": 104}
    plain = parse_destination(base)
    assert isinstance(plain, DestinationSettings) and plain.tls is None
    tls = {"ca_certificates": str(pki.ca.certificate), "server_name": "localhost"}
    parsed = parse_destination({**base, "tls": tls})
    assert isinstance(parsed, DestinationSettings) and parsed.tls is not None
    assert parsed.model_dump(mode="json")["tls"]["server_name"] == "localhost"
    with pytest.raises(InvalidInput) as caught:
        parse_destination({**base, "tls": {"ca_certificates": str(tmp_path / "x.pem")}})
    assert "tls" in str(caught.value) and "no such file" in str(caught.value)
    with pytest.raises(InvalidInput, match="go together"):
        parse_destination({**base, "tls": {"certificate": str(pki.client.certificate)}})


# -- export: C-STORE over TLS to dcmtk's storescp +tls ------------------------------------


@pytest.fixture
def tls_storescp(pki: Pki, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp with TLS that requires a client certificate from the test CA."""
    port, directory = free_port(), tmp_path / "received"
    directory.mkdir()
    # fmt: off
    command = [
        "storescp", "+tls", str(pki.server.key), str(pki.server.certificate),
        "+cf", str(pki.ca.certificate), "-aet", "TLSPACS", "-od", str(directory), str(port),
    ]
    # fmt: on
    process = subprocess.Popen(
        command,
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: not port_is_free(port), 10, message="storescp +tls listening")
        yield port, directory
    finally:
        process.terminate()
        process.wait(timeout=10)


def _tls_destination(pki: Pki, port: int, ca: Path, **tls: Any) -> DestinationSettings:
    return DestinationSettings.model_validate(
        {
            "ae_title": "TLSPACS",
            "host": LOCALHOST,
            "port": port,
            "timeout_seconds": 10,
            "max_attempts": 1,
            "tls": {
                "ca_certificates": str(ca),
                "certificate": str(pki.client.certificate),
                "private_key": str(pki.client.key),
                **tls,
            },
        }
    )


@pytest.mark.slow
def test_results_are_sent_over_tls_and_a_wrong_ca_fails_naming_tls(
    pki: Pki, tls_storescp: tuple[int, Path], series_files: list[Path]
):
    port, received = tls_storescp
    good = _tls_destination(pki, port, pki.ca.certificate)
    assert echo(good, calling_ae="AINODE") == 0x0000
    send_files(good, series_files, calling_ae="AINODE")
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series_files}
    got = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in received.iterdir()
    }
    assert got == sent

    # The peer's certificate does not chain to the CA the destination trusts.
    wrong_ca = _tls_destination(pki, port, pki.rogue_ca.certificate)
    with pytest.raises(ExportError) as caught:
        send_files(wrong_ca, series_files[:1], calling_ae="AINODE")
    message = str(caught.value)
    assert "TLS certificate verification failed" in message, message
    assert f"TLSPACS@{LOCALHOST}:{port}" in message

    # The certificate is for 127.0.0.1/localhost: another expected name is refused too.
    wrong_name = _tls_destination(pki, port, pki.ca.certificate, server_name="pacs.example")
    with pytest.raises(ExportError, match="TLS certificate verification failed"):
        echo(wrong_name, calling_ae="AINODE")
    assert len(list(received.iterdir())) == len(series_files)


# -- the node process: DICOM TLS listener and HTTPS ---------------------------------------


def _dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, *args],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stored(node: NodeProcess) -> set[str]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        return {row[0] for row in db.execute("SELECT sop_uid FROM instances")}


@pytest.mark.slow
def test_node_serves_dicom_tls_with_mutual_auth_and_https(
    pki: Pki, series_files: list[Path], tmp_path: Path
):
    tls_port, dicom_port, http_port = free_ports(3)
    config = {
        "node": {
            "dicom_port": dicom_port,
            "http_port": http_port,
            "plain_dicom": False,
            "tls": _listener(pki, port=tls_port, require_client_certificate=True),
            "https": {
                "certificate": str(pki.server.certificate),
                "private_key": str(pki.server.key),
            },
        }
    }
    ca = str(pki.ca.certificate)
    trusted = ["+tls", str(pki.client.key), str(pki.client.certificate), "+cf", ca]
    called = ["-aec", "AINODE", LOCALHOST, str(tls_port)]
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series_files]
    with NodeProcess(config, workdir=tmp_path / "node", https_ca=pki.ca.certificate) as node:
        assert port_is_free(dicom_port), "plain_dicom: false must leave the plain port closed"

        # A client with a certificate from the trusted CA: echo and store work.
        result = _dcmtk("echoscu", *trusted, *called)
        assert result.returncode == 0, result.stderr
        result = _dcmtk("storescu", *trusted, *called, str(series_files[0]))
        assert result.returncode == 0, result.stderr
        assert uids[0] in _stored(node)

        # A client whose certificate comes from another CA is refused at the handshake.
        rogue = ["+tls", str(pki.rogue_client.key), str(pki.rogue_client.certificate), "+cf", ca]
        result = _dcmtk("storescu", *rogue, *called, str(series_files[1]))
        assert result.returncode != 0
        # So is a client without a certificate (anonymous TLS) and a plain association.
        result = _dcmtk("storescu", "+tla", "+cf", ca, *called, str(series_files[1]))
        assert result.returncode != 0
        result = _dcmtk("storescu", *called, str(series_files[1]))
        assert result.returncode != 0
        assert uids[1] not in _stored(node)
        # The node logs a refusal after the client has given up, so wait for the lines.
        expected = (
            "TLS handshake refused",
            "TLS certificate verification failed",  # the rogue client
            "PEER_DID_NOT_RETURN_A_CERTIFICATE",  # the anonymous one
            "plain DICOM sent to the TLS port?",
        )

        def refusals_logged() -> bool:
            text = node.log_path.read_text()
            return all(line in text for line in expected)

        assert wait_until(refusals_logged, 10, message="the three refusals in the node's log")

        # After all that the listener still serves a trusted client.
        result = _dcmtk("storescu", *trusted, *called, str(series_files[2]))
        assert result.returncode == 0, result.stderr
        assert uids[2] in _stored(node)

        # HTTPS with the test CA; plain HTTP to the same port is not served.
        assert node.url.startswith("https://")
        response = httpx.get(f"{node.url}/healthz", verify=node.verify, timeout=10)
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{LOCALHOST}:{http_port}/healthz", timeout=5).raise_for_status()
        with pytest.raises(httpx.ConnectError):  # a client not trusting the CA
            httpx.get(f"{node.url}/healthz", timeout=5)

        # The session cookie set at set-up (the first login) carries Secure.
        cookies = _first_admin(node)
        session = [c for c in cookies if c.startswith("ainode_session=")]
        assert session and "secure" in session[0].lower(), cookies


def _first_admin(node: NodeProcess) -> list[str]:
    """Create the first admin through ``/setup`` over HTTPS; return the Set-Cookie lines."""
    code = (node.data_dir / "setup-code").read_text().strip()
    with httpx.Client(base_url=node.url, verify=node.verify, timeout=30) as client:
        page = client.get("/setup")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        form = {"code": code, "username": "admin", "password": ADMIN_PASSWORD}
        response = client.post("/setup", data={**form, "csrf_token": token.group(1)})
        assert response.status_code == 303, response.text
        return response.headers.get_list("set-cookie")


@pytest.mark.slow
@needs_chromium
def test_console_edit_keeps_a_destinations_tls_over_https(pki: Pki, tmp_path: Path):
    """The console's destination form has no TLS fields: saving an edit must not drop
    ``tls`` (the PUT replaces the destination). Logged in over HTTPS in chromium."""
    pytest.importorskip("playwright.sync_api")
    tls = {"ca_certificates": str(pki.ca.certificate), "server_name": "localhost"}
    config = {
        "node": {
            "https": {
                "certificate": str(pki.server.certificate),
                "private_key": str(pki.server.key),
            }
        },
        "destinations": {"pacs": {"ae_title": "PACS", "host": LOCALHOST, "port": 2762, "tls": tls}},
    }
    with NodeProcess(config, workdir=tmp_path / "node", https_ca=pki.ca.certificate) as node:
        _first_admin(node)
        # The browser does not know the test CA; the certificate is checked above.
        with logged_in_page(
            node.url, "admin", ADMIN_PASSWORD, path="/destinations", ignore_https_errors=True
        ) as page:
            assert "TLS" in page.locator("tr[data-destination=pacs]").inner_text()
            page.click("[data-edit-destination=pacs]")
            page.click("#destination-form summary")  # "Retries and time-outs"
            page.fill("#destination-form [name=max_attempts]", "7")
            with page.expect_response(lambda r: r.request.method == "PUT") as answer:
                page.click("#destination-form button[type=submit]")
            assert answer.value.status == 200, answer.value.text()
            stored = page.request.get(f"{node.url}/api/destinations/pacs").json()
    assert stored["max_attempts"] == 7
    assert stored["tls"]["ca_certificates"] == tls["ca_certificates"]
    assert stored["tls"]["server_name"] == "localhost"


# -- pull: C-FIND and C-GET over TLS from an Orthanc with DICOM TLS -----------------------


@pytest.mark.slow
def test_dimse_source_over_tls_queries_and_retrieves(
    pki: Pki, series_files: list[Path], tmp_path: Path
):
    tls_overrides = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki.server.certificate),
        "DicomTlsPrivateKey": str(pki.server.key),
        "DicomTlsTrustedCertificates": str(pki.ca.certificate),
        "DicomTlsRemoteCertificateRequired": True,
    }
    with OrthancServer(
        modalities={"ainode": ["AINODE", LOCALHOST, 1]},
        workdir=tmp_path / "pacs",
        config_overrides=tls_overrides,
    ) as pacs:
        upload_many(pacs.client, series_files)
        header = pydicom.dcmread(series_files[0], stop_before_pixels=True)
        study_uid, series_uid = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
        source = {"kind": "dimse", "ae_title": pacs.aet, "host": LOCALHOST,
                  "port": pacs.dicom_port, "timeout_seconds": 10}  # fmt: skip
        client_tls = {
            "ca_certificates": str(pki.ca.certificate),
            "certificate": str(pki.client.certificate),
            "private_key": str(pki.client.key),
        }
        sources = settings_from_mapping(
            {"sources": {
                "tls": {**source, "tls": client_tls},
                "wrong-ca": {**source, "tls": {**client_tls,
                                               "ca_certificates": str(pki.rogue_ca.certificate)}},
                "plain": source,
            }},
            environ={},
        ).sources  # fmt: skip

        found = query_series(sources["tls"], study_uid, None, calling_ae="AINODE")
        assert [(s.series_uid, s.instance_count) for s in found] == [
            (series_uid, len(series_files))
        ]
        db = Database(tmp_path / "state.sqlite3")
        try:
            ingestor = Ingestor(Spool(tmp_path / "spool"), SeriesStore(db), clock=time.time)
            counts = retrieve_series(sources["tls"], found[0], ingestor, node_ae_title="AINODE")
            assert counts.stored == len(series_files)
            spooled = {p.stem for p in (tmp_path / "spool").rglob("*.dcm")}
            assert len(spooled) == len(series_files)
        finally:
            db.close()

        with pytest.raises(SourceError, match="TLS certificate verification failed"):
            query_series(sources["wrong-ca"], study_uid, None, calling_ae="AINODE")
        with pytest.raises(SourceError, match="C-FIND association"):
            query_series(sources["plain"], study_uid, None, calling_ae="AINODE")


@pytest.mark.slow
def test_a_silent_client_holds_only_its_own_connection_until_the_handshake_timeout(
    pki: Pki, tmp_path: Path
):
    """The handshake runs in the connection's own thread: a client that connects and says
    nothing neither delays the next client nor stays past the handshake timeout."""
    tls_port = free_port()
    listener = _listener(pki, port=tls_port, handshake_timeout_seconds=12.0)
    settings = stepped_settings(tmp_path, {"node": {"tls": listener}})
    trusted = ["+tls", str(pki.client.key), str(pki.client.certificate)]
    with (
        listening_node(settings, time.time),
        socket.create_connection((LOCALHOST, tls_port)) as silent,
    ):
        started = time.monotonic()
        result = _dcmtk(
            "echoscu", *trusted, "+cf", str(pki.ca.certificate), LOCALHOST, str(tls_port)
        )
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 9  # not after the silent one's 12 s
        silent.settimeout(15)
        assert silent.recv(1) == b""  # the node closed the silent connection
        assert time.monotonic() - started >= 11
        # The plain listener (plain_dicom defaults to on) serves beside the TLS one.
        plain = _dcmtk("echoscu", LOCALHOST, str(settings.node.dicom_port))
        assert plain.returncode == 0, plain.stderr


@pytest.mark.slow
def test_export_job_with_a_wrong_ca_fails_its_attempt_naming_tls_then_delivers(
    pki: Pki, tls_storescp: tuple[int, Path], series_files: list[Path], database, clock
):
    port, received = tls_storescp
    settings = {"pacs": _tls_destination(pki, port, pki.rogue_ca.certificate, server_name=None)}
    settings["pacs"] = settings["pacs"].model_copy(update={"max_attempts": 3})
    queue = JobQueue(database)
    exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, series_files[0].parent)

    assert exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "exporting" and job.error is not None
    assert "TLS certificate verification failed" in job.error, job.error
    assert not list(received.iterdir())

    # The admin puts the right CA in: the next attempt goes through over TLS.
    settings["pacs"] = _tls_destination(pki, port, pki.ca.certificate).model_copy(
        update={"max_attempts": 3}
    )
    clock.advance(3600)
    assert exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "done" and job.error is None, job.error
    assert len(list(received.iterdir())) == len(series_files)


@pytest.mark.slow
def test_admin_api_saves_and_echoes_a_tls_destination(pki: Pki, tmp_path: Path):
    """The node's own TLS listener (mutual TLS) as a destination, through the admin API."""
    tls_port = free_port()
    listener = _listener(pki, port=tls_port, require_client_certificate=True)
    with served_node(tmp_path / "node", {"node": {"tls": listener}}) as served:
        client_tls = {
            "ca_certificates": str(pki.ca.certificate),
            "certificate": str(pki.client.certificate),
            "private_key": str(pki.client.key),
        }
        own = {"ae_title": "AINODE", "host": LOCALHOST, "port": tls_port, "tls": client_tls}
        with served.client(served.admin_token) as client:
            created = client.post("/api/destinations/self-tls", json=own)
            assert created.status_code == 201, created.text
            assert created.json()["tls"]["ca_certificates"] == client_tls["ca_certificates"]
            echo = client.post("/api/destinations/self-tls/echo").json()
            assert echo["ok"] and echo["status"] == 0, echo

            # Without a client certificate the node's own listener refuses the association.
            anonymous = {**own, "tls": {"ca_certificates": client_tls["ca_certificates"]}}
            failed = client.post("/api/destinations/echo", json=anonymous).json()
            assert not failed["ok"] and "client certificate" in failed["message"], failed

            missing = str(tmp_path / "missing-ca.pem")
            bad = client.post(
                "/api/destinations/bad",
                json={**own, "tls": {**client_tls, "ca_certificates": missing}},
            )
            assert bad.status_code == 422, bad.text
            error = bad.json()["errors"][0]
            assert error["field"] == "tls" and missing in error["message"], error


def test_a_tls_file_gone_after_saving_fails_only_that_destinations_sends(
    pki: Pki, tmp_path: Path, database, series_files: list[Path]
):
    """Stored destinations are read on every export attempt: a CA file removed later must
    not make the whole destination list unreadable, only that destination's sends fail."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.certificate.read_bytes())
    store = DestinationStore(database)
    tls_pacs = parse_destination(
        {
            "ae_title": "PACS",
            "host": LOCALHOST,
            "port": free_port(),
            "tls": {"ca_certificates": str(ca)},
        }
    )
    plain = parse_destination({"ae_title": "OTHER", "host": LOCALHOST, "port": 104})
    store.put("tls-pacs", tls_pacs, "test", 0.0, create=True)
    store.put("other", plain, "test", 0.0, create=True)
    ca.unlink()
    mapping = store.mapping()
    assert set(mapping) == {"tls-pacs", "other"}
    with pytest.raises(ExportError) as caught:
        send_files(mapping["tls-pacs"], series_files[:1], calling_ae="AINODE")
    message = str(caught.value)
    assert "TLS settings unusable" in message and str(ca) in message, message
