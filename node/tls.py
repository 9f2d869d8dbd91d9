"""TLS contexts for DICOM (PS3.15 Annex B, BCP 195) and HTTPS, checked eagerly.

Every file is opened and parsed when the configuration is validated, so a missing
file, an unreadable or encrypted key, or a key that does not belong to its
certificate stops start-up with a message naming the configuration key.
Only TLS 1.2 and later are offered; TLS 1.2 is limited to forward-secret AEAD suites.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: TLS 1.2 suites of the BCP 195 profile (TLS 1.3 suites are all acceptable).
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names its key."""


def _read(key: str, path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise TlsFileError(f"{key}: {path}: no such file") from None
    except OSError as exc:
        raise TlsFileError(f"{key}: {path}: cannot read ({exc.strerror})") from None


def _check_certificates(key: str, path: Path) -> None:
    blocks = _PEM_CERT.findall(_read(key, path))
    if not blocks:
        raise TlsFileError(f"{key}: {path}: no PEM certificate in the file")
    for block in blocks:
        try:
            ssl.PEM_cert_to_DER_cert(block)
        except ValueError:
            raise TlsFileError(f"{key}: {path}: a certificate in it is not valid PEM") from None


def _no_password() -> str:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal.
    raise TlsFileError("the private key is encrypted; give an unencrypted PEM key")


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path, prefix: str) -> None:
    _check_certificates(f"{prefix}certificate", certificate)
    _read(f"{prefix}private_key", private_key)
    try:
        context.load_cert_chain(certificate, private_key, password=_no_password)
    except TlsFileError as exc:
        raise TlsFileError(f"{prefix}private_key: {private_key}: {exc}") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsFileError(
                f"{prefix}private_key: {private_key}: does not match the certificate {certificate}"
            ) from None
        raise TlsFileError(
            f"{prefix}private_key: {private_key}: not a usable PEM private key ({exc.reason})"
        ) from None


def _load_cas(context: ssl.SSLContext, path: Path, prefix: str) -> None:
    key = f"{prefix}ca_certificates"
    _check_certificates(key, path)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise TlsFileError(f"{key}: {path}: not a usable CA bundle ({exc.reason})") from None


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)


class _ListenerContext(ssl.SSLContext):
    """Server context whose handshake has a time limit and whose refusals are logged.

    The node negotiates TLS in each connection's own thread (:mod:`node.dicom.scp`);
    without a limit a peer that connects and sends nothing would hold that thread.
    """

    handshake_timeout = 10.0

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("server_side"):
            return super().wrap_socket(sock, *args, **kwargs)
        peer = _peer_text(sock)
        sock.settimeout(self.handshake_timeout)
        try:
            wrapped = super().wrap_socket(sock, *args, **kwargs)
        except OSError as exc:
            log.warning("TLS handshake refused peer=%s reason=%s", peer, describe(exc))
            sock.close()
            raise
        wrapped.settimeout(None)
        return wrapped


def _peer_text(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def server_context(
    certificate: Path,
    private_key: Path,
    ca_certificates: Path | None = None,
    *,
    require_client_certificate: bool = False,
    handshake_timeout: float = 10.0,
    prefix: str = "",
) -> ssl.SSLContext:
    """A TLS 1.2+ server context; clients are verified against ``ca_certificates``.

    With ``require_client_certificate`` a client must present a certificate that
    chains to ``ca_certificates``; without it, one is verified if presented.
    A client must finish its handshake within ``handshake_timeout`` seconds.
    ``prefix`` is put before key names in error messages.
    """
    context = _ListenerContext(ssl.PROTOCOL_TLS_SERVER)
    context.handshake_timeout = handshake_timeout
    _harden(context)
    _load_chain(context, certificate, private_key, prefix)
    if ca_certificates is not None:
        _load_cas(context, ca_certificates, prefix)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    elif require_client_certificate:
        raise TlsFileError(
            f"{prefix}ca_certificates: needed to verify client certificates"
            " (require_client_certificate is on)"
        )
    return context


def client_context(
    ca_certificates: Path | None = None,
    certificate: Path | None = None,
    private_key: Path | None = None,
    *,
    prefix: str = "",
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the server (its certificate and name).

    ``ca_certificates`` replaces the system's trust store; ``certificate`` and
    ``private_key`` are the node's own, for servers that require mutual TLS.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
    context.sslsocket_class = _RecordingSocket
    _harden(context)
    if ca_certificates is not None:
        _load_cas(context, ca_certificates, prefix)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if (certificate is None) != (private_key is None):
        raise TlsFileError(f"{prefix}certificate and {prefix}private_key go together")
    if certificate is not None and private_key is not None:
        _load_chain(context, certificate, private_key, prefix)
    return context


class _RecordingSocket(ssl.SSLSocket):
    """Keeps its TLS error on its context: pynetdicom only logs it.

    In TLS 1.3 the server checks the client's certificate after the client's side of
    the handshake is done, so a refusal arrives as an alert on the first read.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as exc:
            self.context.tls_error = exc  # type: ignore[attr-defined]
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self.context.tls_error = exc  # type: ignore[attr-defined]
            raise


def handshake_error(context: ssl.SSLContext) -> str | None:
    """Why TLS failed on the last connection made with ``context`` (a :func:`client_context`)."""
    error = getattr(context, "tls_error", None)
    return describe(error) if error is not None else None


def describe(error: BaseException) -> str:
    """A short reason for a TLS failure, e.g. ``certificate verify failed: ...``."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        reason = str(error.reason or error)
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
            return f"TLS refused by the peer ({reason}): does it require a client certificate?"
        if "ALERT" in reason and "CERTIFICATE" in reason:
            return f"TLS refused by the peer ({reason}): it did not accept the node's certificate"
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST"):
            return f"not TLS ({reason}): plain DICOM sent to the TLS port?"
        if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION"):
            return f"TLS version refused ({reason}): TLS 1.2 or later is required"
        return f"TLS error: {reason}"
    if isinstance(error, TimeoutError | socket.timeout):
        return "TLS handshake timed out"
    return f"TLS handshake failed: {error}"
