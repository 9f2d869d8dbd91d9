"""The node's own DICOMweb and pull endpoints and the tokens they accept."""

from __future__ import annotations

from pydantic import Field, model_validator

from node.config.base import _Strict


class ApiTokenSettings(_Strict):
    """A bearer token accepted on STOW-RS and the pull/notify API.

    Give the SHA-256 hex digest (``sha256``) rather than the token itself where
    the file may be read by others; ``token`` is accepted for development.
    """

    name: str = Field(min_length=1, max_length=64)
    token: str = Field("", min_length=0)
    sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$")

    @model_validator(mode="after")
    def _one_secret(self) -> ApiTokenSettings:
        if bool(self.token) == bool(self.sha256):
            raise ValueError("give exactly one of token and sha256")
        if self.token and len(self.token) < 16:
            raise ValueError("a token must have at least 16 characters")
        return self


class DicomWebSettings(_Strict):
    """The node's DICOMweb and pull endpoints (``/dicomweb``, ``/api/pull``, ``/api/notify``)."""

    #: Tokens accepted as ``Authorization: Bearer <token>``. With none, these endpoints
    #: answer 401 to everyone (they are off) unless ``allow_anonymous`` is set.
    tokens: list[ApiTokenSettings] = Field(default_factory=list)
    #: Development only: accept requests without a token.
    allow_anonymous: bool = False
    #: Largest STOW-RS part accepted (bytes are spooled to a temporary file while read).
    max_part_mb: int = Field(2048, ge=1)
