"""Typed exceptions raised inside the node.

The DICOM and HTTP boundaries translate these into status codes; everything
inside raises them so a caller can tell *why* something failed.
"""


class AinodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(AinodeError):
    """The configuration file is invalid; the message names file, key path and reason."""


class DatabaseCorrupt(AinodeError):
    """The state database failed its integrity check; the node refuses to start on it."""


class DatabaseTooNew(AinodeError):
    """The state database was written by a newer node; this one refuses to start on it."""


class SpoolError(AinodeError):
    """An instance could not be written durably to the spool."""


class VolumeError(AinodeError):
    """A series cannot be assembled into a consistent volume (geometry, mixed sizes...)."""


class InputRejected(AinodeError):
    """A plugin refuses its input; the message says why (shown on the job)."""


class InputSkipped(InputRejected):
    """The input is outside what the routine takes: the job ends ``skipped``, not ``failed``.

    ``source`` is ``quality`` (the input-quality gate) or ``accepts`` (the routine's
    declared ``Accepts`` or its ``check()``); ``checks`` lists each failed check as
    ``{"check": name, "message": text}``.
    """

    def __init__(
        self, message: str, *, source: str, checks: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.source = source
        self.checks = checks or []


class PluginError(AinodeError):
    """A plugin failed to import, load or run."""


class TemplateError(AinodeError):
    """A result template is invalid; the message names file, path inside it and reason."""


class ExportError(AinodeError):
    """Sending results to a destination failed.

    ``status`` is the peer's answer where it gave one: the DICOM status of a refused
    C-STORE or C-ECHO, the HTTP status of a refused request (None: no answer at all).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(AinodeError):
    """The named rule, job, series, destination or user does not exist."""


class Conflict(AinodeError):
    """The change clashes with the current state (name taken, still referenced...)."""


class InvalidInput(AinodeError):
    """Submitted data is invalid; ``problems`` lists ``(field, message)`` pairs."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class Forbidden(AinodeError):
    """The user's role does not allow the action."""


class JobTimeout(AinodeError):
    """A job ran past its time limit."""
