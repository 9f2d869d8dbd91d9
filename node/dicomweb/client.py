"""A configured :class:`dicomweb_client.DICOMwebClient` for a source or destination.

Authentication (none, HTTP basic, bearer token), TLS verification and the
timeout come from :class:`~node.config.DicomWebEndpoint`; one
:class:`requests.Session` carries them so every QIDO, WADO and STOW request
of the client uses the same settings.

dicomweb-client's own retry is turned off: by default it repeats a request that
raised (a refused connection, a TLS failure) five times with 2, 4, 8 and 16 s
sleeps in between, which held the exporter (or a pull) for 30 s per attempt and
hid the destination's configured backoff. The node retries instead: exports with
the destination's ``backoff_seconds``/``max_attempts``, pulls with the pull
service's attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from dicomweb_client.api import DICOMwebClient

from node.config import DicomWebEndpoint

log = logging.getLogger(__name__)


def http_session(endpoint: DicomWebEndpoint) -> requests.Session:
    """A :class:`requests.Session` with the endpoint's credentials and TLS settings."""
    session = requests.Session()
    auth = endpoint.auth
    if auth.type == "basic":
        session.auth = (auth.username, auth.password)
    elif auth.type == "bearer":
        session.headers["Authorization"] = f"Bearer {auth.token}"
    tls = endpoint.tls
    session.verify = str(tls.ca_bundle) if tls.verify and tls.ca_bundle else tls.verify
    if tls.client_cert is not None:
        session.cert = (
            (str(tls.client_cert), str(tls.client_key))
            if tls.client_key is not None
            else str(tls.client_cert)
        )
    return session


@contextmanager
def dicomweb_client(endpoint: DicomWebEndpoint) -> Iterator[DICOMwebClient]:
    """A client for the endpoint's service root; its session is closed on exit."""
    session = http_session(endpoint)
    try:
        client = DICOMwebClient(
            url=endpoint.url.rstrip("/"), session=session, timeout=endpoint.timeout_seconds
        )
        client.set_http_retry_params(retry=False)
        yield client
    finally:
        session.close()
