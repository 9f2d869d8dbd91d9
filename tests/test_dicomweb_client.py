"""A DICOMweb destination's credentials and TLS settings on the wire.

A small HTTPS server (Python's ``http.server`` in an SSL context) with a certificate
signed by a throw-away CA made with the ``openssl`` command records what each request
carried. :func:`node.dicomweb.client.http_session` and the QIDO-RS probe the exporter's
checks use must send the bearer token or basic credentials, verify the server against
the configured CA bundle (and fail with the default trust store), and present a client
certificate for mutual TLS. Basic authentication against a real Orthanc is in
``tests/test_export.py``.
"""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from node.config import DicomWebDestinationSettings
from node.dicomweb.client import http_session
from node.errors import ExportError
from node.export.stow import probe

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _signed(directory: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    """A key and a certificate for ``subject`` signed by ``ca.pem``/``ca.key``."""
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-subj", subject,
             "-out", csr, cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", ext_file, "-out", cert,
             cwd=directory)  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=ainode test CA", cwd=directory)  # fmt: skip
    server_cert, server_key = _signed(
        directory, "server", "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    client_cert, client_key = _signed(
        directory, "client", "/CN=ainode-node", "extendedKeyUsage=clientAuth\n"
    )
    return Pki(directory / "ca.pem", server_cert, server_key, client_cert, client_key)


@dataclass
class Seen:
    """What the server saw of each request."""

    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[tuple[str, Seen]]:
    seen = Seen()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            subject = dict(item for rdn in peer["subject"] for item in rdn) if peer else {}
            seen.requests.append(
                {
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "client_cn": subject.get("commonName"),
                }
            )
            body = json.dumps([]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is asked for, not required

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client refusing the certificate is what some tests want

    httpd = Server(("127.0.0.1", 0), Handler)
    # The handshake happens on the handler's first read, in the request's own thread: a
    # client that refuses the certificate must not hold up the accepting thread.
    httpd.socket = context.wrap_socket(
        httpd.socket, server_side=True, do_handshake_on_connect=False
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/dicom-web", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def default_trust_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests would take a CA bundle from the environment; the tests name their own."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)


def destination(url: str, **values: Any) -> DicomWebDestinationSettings:
    return DicomWebDestinationSettings.model_validate({"kind": "dicomweb", "url": url, **values})


def test_bearer_token_is_sent_to_a_server_verified_against_the_ca_bundle(server, pki) -> None:
    url, seen = server
    web = destination(url, auth={"type": "bearer", "token": "s3cret-token"},
                      tls={"ca_bundle": str(pki.ca)})  # fmt: skip
    seen.requests.clear()
    probe(web)  # a QIDO-RS query through dicomweb-client and the configured session
    (request,) = seen.requests
    assert request["path"].startswith("/dicom-web/studies")
    assert request["authorization"] == "Bearer s3cret-token"
    assert request["client_cn"] is None


def test_basic_credentials_are_sent(server, pki) -> None:
    url, seen = server
    web = destination(url, auth={"type": "basic", "username": "user", "password": "pa:ss"},
                      tls={"ca_bundle": str(pki.ca)})  # fmt: skip
    seen.requests.clear()
    with http_session(web) as session:
        assert session.get(f"{url}/studies").status_code == 200
    expected = "Basic " + base64.b64encode(b"user:pa:ss").decode()
    assert seen.requests[-1]["authorization"] == expected


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_default_verification_refuses_a_certificate_of_an_unknown_ca(server) -> None:
    url, seen = server
    seen.requests.clear()
    web = destination(url, auth={"type": "bearer", "token": "s3cret-token"})
    with http_session(web) as session, pytest.raises(requests.exceptions.SSLError):
        session.get(f"{url}/studies")
    started = time.monotonic()
    with pytest.raises(
        ExportError, match=r"QIDO-RS on https://127\.0\.0\.1.*CERTIFICATE_VERIFY_FAILED"
    ):
        probe(web)
    # One try: the node's backoff retries, not dicomweb-client's (30 s of sleeps; the
    # bound leaves room for a loaded CI machine).
    assert time.monotonic() - started < 15
    assert seen.requests == []  # the token never left the node
    # Verification off (a self-signed test server only): the request goes through.
    with http_session(destination(url, tls={"verify": False})) as session:
        assert session.get(f"{url}/studies").status_code == 200


def test_client_certificate_for_mutual_tls(server, pki) -> None:
    url, seen = server
    web = destination(url, tls={"ca_bundle": str(pki.ca), "client_cert": str(pki.client_cert),
                                "client_key": str(pki.client_key)})  # fmt: skip
    seen.requests.clear()
    probe(web)
    assert seen.requests[-1]["client_cn"] == "ainode-node"
    assert seen.requests[-1]["authorization"] is None
