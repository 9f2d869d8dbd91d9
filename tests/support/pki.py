"""A throw-away PKI made with the ``openssl`` command line: a CA, a server certificate
for 127.0.0.1/localhost, a client certificate, and a second, untrusted CA with its own
client certificate (RSA keys: dcmtk's BCP 195 profile negotiates RSA suites)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_LEAF_EXTENSIONS = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=IP:127.0.0.1,DNS:localhost
"""


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@dataclass(frozen=True)
class Pair:
    certificate: Path
    key: Path


def make_ca(directory: Path, name: str) -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", str(pair.key), "-out", str(pair.certificate), "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return pair


def issue(ca: Pair, directory: Path, name: str) -> Pair:
    """A certificate for 127.0.0.1/localhost (server and client use) signed by ``ca``."""
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    request, extensions = directory / f"{name}.csr", directory / f"{name}.ext"
    extensions.write_text(_LEAF_EXTENSIONS)
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pair.key),
        "-out", str(request), "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca.certificate), "-CAkey", str(ca.key),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(pair.certificate),
    )  # fmt: skip
    return pair


@dataclass(frozen=True)
class Pki:
    ca: Pair
    server: Pair
    client: Pair
    rogue_ca: Pair
    rogue_client: Pair


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory, "test-ca")
    rogue = make_ca(directory, "rogue-ca")
    return Pki(
        ca=ca,
        server=issue(ca, directory, "server"),
        client=issue(ca, directory, "client"),
        rogue_ca=rogue,
        rogue_client=issue(rogue, directory, "rogue-client"),
    )
