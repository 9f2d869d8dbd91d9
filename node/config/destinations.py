"""Where results go: the result profile, the retry budget and each destination kind."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from node.config.base import AE_TITLE_PATTERN, Port, _Strict
from node.config.network import DicomTlsClientSettings
from node.results.kinds import DEFAULT_PROFILE, check_profile, profile_tags


class ResultProfileSettings(_Strict):
    """What a destination receives (mixed into every kind of destination)."""

    #: Result profile: the kinds of result objects this destination receives
    #: (``seg``, ``labelmap_seg``, ``fractional_seg``, ``sr``, ``gsps``, ``sc``, ``ko``,
    #: ``pmap``, ``heatmap_sc``, ``derived``, ``derived_sc``).
    #: E.g. ``[sc, gsps]`` for a PACS that shows neither SEG nor SR.
    results: list[str] = Field(default_factory=lambda: [k.value for k in DEFAULT_PROFILE])

    @field_validator("results")
    @classmethod
    def _profile(cls, value: list[str]) -> list[str]:
        return [kind.value for kind in check_profile(value)]

    @property
    def result_tags(self) -> frozenset[str]:
        """File tags of the result files this destination is sent."""
        return profile_tags(self.results)


class RetrySettings(_Strict):
    """How long a destination that is down is retried (mixed into every kind of destination).

    The default budget is a day: retries 2 s apart at first, doubling to one every
    10 minutes, until 24 h after the results were written. A destination that comes
    back (it answers the probe, or accepts another job's results) releases its waiting
    jobs at once.
    """

    #: Send attempts before the job fails (results stay on disk); none: only the time budget.
    max_attempts: int | None = Field(None, ge=1)
    #: First retry delay; doubles each attempt up to ``max_backoff_seconds``.
    backoff_seconds: float = Field(2.0, ge=0)
    max_backoff_seconds: float = Field(600.0, ge=0)
    #: The job fails when its next attempt would come later than this after its results
    #: were written (or an administrator's retry).
    give_up_after_seconds: float = Field(86400.0, gt=0)
    #: While jobs wait for this destination, probe it (C-ECHO; QIDO-RS for DICOMweb) this
    #: often; when it answers, they are retried at once.
    probe_seconds: float = Field(30.0, gt=0)


class DestinationSettings(RetrySettings, ResultProfileSettings):
    """A DICOM peer that receives results by C-STORE."""

    ae_title: str = Field(pattern=AE_TITLE_PATTERN)
    host: str
    port: Port
    timeout_seconds: float = Field(30.0, gt=0)
    #: DICOM TLS to this peer (omit for plain DICOM).
    tls: DicomTlsClientSettings | None = None


class HttpAuthSettings(_Strict):
    """How the node authenticates to a DICOMweb server: ``none``, ``basic`` or ``bearer``."""

    type: Literal["none", "basic", "bearer"] = "none"
    username: str = ""
    password: str = ""
    token: str = ""

    @model_validator(mode="after")
    def _credentials_present(self) -> HttpAuthSettings:
        if self.type == "basic" and not self.username:
            raise ValueError("basic authentication needs a username")
        if self.type == "bearer" and not self.token:
            raise ValueError("bearer authentication needs a token")
        return self


class TlsSettings(_Strict):
    """TLS checks for an ``https://`` DICOMweb server."""

    #: Verify the server's certificate (turn off for a self-signed test server only).
    verify: bool = True
    #: CA bundle (PEM) to verify against instead of the system store.
    ca_bundle: Path | None = None
    #: Client certificate and key (PEM) for mutual TLS.
    client_cert: Path | None = None
    client_key: Path | None = None


class DicomWebEndpoint(_Strict):
    """A DICOMweb service root, e.g. ``http://pacs:8042/dicom-web``."""

    kind: Literal["dicomweb"]
    url: str = Field(pattern=r"^https?://")
    auth: HttpAuthSettings = HttpAuthSettings()
    tls: TlsSettings = TlsSettings()
    timeout_seconds: float = Field(30.0, gt=0)


class DicomWebDestinationSettings(DicomWebEndpoint, RetrySettings, ResultProfileSettings):
    """A DICOMweb server that receives results by STOW-RS (``kind: dicomweb``)."""


def _destination_kind(value: Any) -> str:
    kind = value.get("kind", "dimse") if isinstance(value, Mapping) else getattr(value, "kind", "")
    return "dicomweb" if kind == "dicomweb" else "dimse"


#: A destination: DIMSE C-STORE (no ``kind`` key) or DICOMweb STOW-RS (``kind: dicomweb``).
AnyDestination = Annotated[
    Annotated[DestinationSettings, Tag("dimse")]
    | Annotated[DicomWebDestinationSettings, Tag("dicomweb")],
    Discriminator(_destination_kind),
]
