"""Shared pieces of every section: the strict model base, AE titles, ports, key-path errors."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: Validation-context key: ``{CHECK_FILES: False}`` skips reading TLS files (stored values).
CHECK_FILES = "check_tls_files"

AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # printable ASCII without backslash
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _KeyedError(ValueError):
    """A validation error that knows the key path it belongs to."""

    def __init__(self, location: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.location = location
