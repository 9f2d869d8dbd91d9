"""Where the node keeps its state: the embedded SQLite file (default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import field_validator

from node.config.base import _Strict

_POSTGRES_SCHEMES = ("postgresql", "postgres")


class StateSettings(_Strict):
    """``state.url``: ``postgresql://user:password@host:port/dbname`` puts jobs, series,
    rules, users, audit and pulls in PostgreSQL (several nodes can share it);
    ``sqlite:///path/state.sqlite3`` or no URL keeps the embedded SQLite file (by
    default ``<node.data_dir>/state.sqlite3``). See README "PostgreSQL state"."""

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        url = url.strip()
        scheme = url.partition(":")[0].lower()
        if scheme == "sqlite":
            if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
                raise ValueError(
                    "a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path"
                )
            return url
        if scheme not in _POSTGRES_SCHEMES:
            raise ValueError(
                f"unsupported state URL scheme {scheme!r}: use postgresql://user:password@host"
                ":port/dbname, or sqlite:///path (or leave state.url out for the embedded file)"
            )
        try:
            parts = urlsplit(url)
            port = parts.port  # raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"malformed PostgreSQL URL: {exc}") from None
        if not parts.hostname:
            raise ValueError("the PostgreSQL URL names no host (postgresql://user@host/dbname)")
        if not parts.path.strip("/"):
            raise ValueError("the PostgreSQL URL names no database (…@host:port/dbname)")
        if port == 0:
            raise ValueError("the PostgreSQL URL's port must be 1-65535")
        return url

    @property
    def is_postgres(self) -> bool:
        return self.url is not None and self.url.partition(":")[0].lower() in _POSTGRES_SCHEMES

    def sqlite_path(self, default: Path) -> Path:
        """The SQLite file: the URL's path, else ``default``."""
        if self.url is None or self.is_postgres:
            return default
        return Path(self.url[len("sqlite:///") :])
