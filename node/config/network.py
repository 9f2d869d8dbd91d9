"""The node's identity and listeners: DICOM (plain and TLS), HTTPS, who may associate."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator

from node.config.base import AE_TITLE_PATTERN, CHECK_FILES, Port, _Strict
from node.tls import client_context, server_context


class DicomTlsListenerSettings(_Strict):
    """The DICOM TLS listener (PS3.15 Annex B, BCP 195: TLS 1.2+ only).

    The files are read when the configuration is validated; a problem names its key.
    """

    port: Port = 2762
    #: The node's certificate (PEM; the chain may follow it) and its unencrypted key.
    certificate: Path
    private_key: Path
    #: CA certificates (PEM) that client certificates must chain to.
    ca_certificates: Path | None = None
    #: Mutual TLS: refuse clients without a certificate from ``ca_certificates``.
    require_client_certificate: bool = False
    #: A client must finish its TLS handshake within this time (each handshake runs in
    #: its connection's own thread: a peer that connects and stays silent holds only that).
    handshake_timeout_seconds: float = Field(10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _files_usable(self) -> DicomTlsListenerSettings:
        self.context()
        return self

    def context(self) -> ssl.SSLContext:
        """A fresh :class:`ssl.SSLContext` for the listener."""
        return server_context(
            self.certificate,
            self.private_key,
            self.ca_certificates,
            require_client_certificate=self.require_client_certificate,
            handshake_timeout=self.handshake_timeout_seconds,
        )


class DicomTlsClientSettings(_Strict):
    """TLS for an association the node opens (a destination or a pull source)."""

    #: CA certificates (PEM) the peer's certificate must chain to (default: the system's).
    ca_certificates: Path | None = None
    #: The node's client certificate and key, for peers that require mutual TLS.
    certificate: Path | None = None
    private_key: Path | None = None
    #: Name checked against the peer's certificate (default: the peer's ``host``).
    server_name: str | None = None

    @model_validator(mode="after")
    def _files_usable(self, info: ValidationInfo) -> DicomTlsClientSettings:
        # Stored destinations are re-read with the check off: a file that went missing
        # after saving fails that destination's sends (with the reason), not every read.
        if (info.context or {}).get(CHECK_FILES, True):
            self.context()
        return self

    def context(self) -> ssl.SSLContext:
        """A fresh :class:`ssl.SSLContext` (it records why its handshake failed)."""
        return client_context(self.ca_certificates, self.certificate, self.private_key)


class HttpsSettings(_Strict):
    """HTTPS for the API and console: the certificate (PEM, chain after it) and its key."""

    certificate: Path
    private_key: Path

    @model_validator(mode="after")
    def _files_usable(self) -> HttpsSettings:
        self.context()
        return self

    def context(self) -> ssl.SSLContext:
        """A fresh :class:`ssl.SSLContext` for uvicorn."""
        return server_context(self.certificate, self.private_key)


class AcceptSettings(_Strict):
    """One calling AE allowed to associate, optionally only from some hosts."""

    ae_title: str = Field(pattern=AE_TITLE_PATTERN)
    #: Addresses or CIDR networks (``10.1.2.0/24``); empty: from any host.
    hosts: list[str] = []

    @field_validator("hosts")
    @classmethod
    def _networks(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ValueError(f"{host!r} is not an IP address or CIDR network") from None
        return hosts

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(host, strict=False) for host in self.hosts]


class NodeSettings(_Strict):
    """The node's own identity and where it keeps its state."""

    ae_title: str = Field("AINODE", pattern=AE_TITLE_PATTERN)
    dicom_port: Port = 11112
    http_port: Port = 8080
    bind_address: str = "0.0.0.0"
    data_dir: Path = Path("./var")
    #: This node's identity among several sharing one state (recorded with each instance it
    #: receives and each lease it holds); default ``<hostname>:<dicom_port>``.
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    #: Where received instances are kept (default ``<data_dir>/spool``). Set it to a
    #: filesystem every node mounts at the same path (NFS, CephFS) when several nodes share
    #: one state: each node then writes under ``<spool_dir>/<name>/``.
    spool_dir: Path | None = None
    #: Where result files are written (default ``<data_dir>/results``); shared like
    #: ``spool_dir`` so that any node's exporter can send any node's results.
    results_dir: Path | None = None
    #: Largest PDU the SCP accepts; 128 KiB or more speeds up large images.
    max_pdu: int = Field(131072, ge=16384)
    #: An association with no traffic for this many seconds is aborted by the node
    #: (pynetdicom's network timeout; Orthanc's ``DicomScpTimeout``). Raise it for a
    #: sender that keeps its associations open between studies.
    idle_timeout_seconds: float = Field(60.0, gt=0, le=86400)
    #: Refuse new instances (0xA700) when free disk space falls below this.
    min_free_disk_mb: int = Field(512, ge=0)
    #: Calling AEs allowed to associate (None: any AE from any host, as before);
    #: ``destinations`` in the YAML: each C-STORE destination's AE from its host(s).
    accept: list[AcceptSettings] | None = None
    #: Other called AE titles the node answers to when ``accept`` is set.
    ae_aliases: list[Annotated[str, Field(pattern=AE_TITLE_PATTERN)]] = []
    #: Serve unencrypted DICOM on ``dicom_port`` (turn off to accept TLS only).
    plain_dicom: bool = True
    #: A DICOM TLS listener beside (or instead of) the plain one.
    tls: DicomTlsListenerSettings | None = None
    #: Serve the API and console over HTTPS (session cookies are then ``Secure``).
    https: HttpsSettings | None = None

    @model_validator(mode="after")
    def _some_listener(self) -> NodeSettings:
        if not self.plain_dicom and self.tls is None:
            raise ValueError("plain_dicom is off and no tls listener is configured")
        if self.plain_dicom and self.tls is not None and self.tls.port == self.dicom_port:
            raise ValueError(f"tls.port {self.tls.port} is also the plain dicom_port")
        return self

    @property
    def identity(self) -> str:
        """:attr:`name`, or ``<hostname>:<dicom_port>`` when none is configured."""
        return self.name or f"{socket.gethostname()}:{self.dicom_port}"
