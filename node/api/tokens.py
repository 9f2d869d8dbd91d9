"""Bearer tokens for the machine-to-machine endpoints (STOW-RS, pull, notify, status).

Tokens come from the YAML (``dicomweb.tokens``: a name and the token or its
SHA-256). Only digests are kept in memory and compared in constant time; the
log names the token, never its value. This is deliberately small: when the
admin API's user tokens are available, pass their lookup as ``fallback`` so
either kind is accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable

from fastapi import HTTPException, Request

from node.config import DicomWebSettings

log = logging.getLogger(__name__)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens."""

    def __init__(
        self,
        settings: DicomWebSettings,
        *,
        fallback: Callable[[str], str | None] | None = None,
    ) -> None:
        self._digests = [
            (entry.sha256 or digest(entry.token), entry.name) for entry in settings.tokens
        ]
        self._anonymous = settings.allow_anonymous
        self._fallback = fallback

    def identify(self, request: Request) -> str:
        """The token's name; raises HTTP 401 when the request is not authenticated."""
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            presented = digest(header[7:].strip())
            for expected, name in self._digests:
                if hmac.compare_digest(presented, expected):
                    return name
            if self._fallback is not None:
                found = self._fallback(header[7:].strip())
                if found is not None:
                    return found
            log.warning("bearer token refused path=%s", request.url.path)
        elif self._anonymous:
            return "anonymous"
        raise HTTPException(
            status_code=401,
            detail="send a valid token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="ainode"'},
        )
