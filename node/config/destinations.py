"""Where results go: the result profile, the retry budget and each destination kind."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Field,
    PlainValidator,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from node.config.base import AE_TITLE_PATTERN, Port, _Strict
from node.config.network import DicomTlsClientSettings
from node.contract.kinds import DEFAULT_PROFILE, check_profile, profile_tags


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


class DestinationBase(RetrySettings, ResultProfileSettings):
    """What every kind of destination has: its result profile and its retry budget.

    Each kind (registered in :data:`DESTINATION_MODELS`) adds its address fields.
    """

    def peer(self) -> str:
        """Where this destination is, for logs, the audit trail and the console."""
        raise NotImplementedError(f"{type(self).__name__} does not say where it is")


class DestinationSettings(DestinationBase):
    """A DICOM peer that receives results by C-STORE."""

    ae_title: str = Field(pattern=AE_TITLE_PATTERN)
    host: str
    port: Port
    timeout_seconds: float = Field(30.0, gt=0)
    #: Associations opened at once to send one job's results, each object over one of
    #: them (the largest first): the peer stores them in parallel (a 1000-slice job's SEG
    #: and SR: export 1.84/2.36 -> 1.46/2.03 s into Orthanc). Objects whose extra
    #: association the peer refuses follow over one more. 1: one association.
    associations: int = Field(2, ge=1, le=16)
    #: DICOM TLS to this peer (omit for plain DICOM).
    tls: DicomTlsClientSettings | None = None

    def peer(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


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


class DicomWebDestinationSettings(DicomWebEndpoint, DestinationBase):
    """A DICOMweb server that receives results by STOW-RS (``kind: dicomweb``)."""

    def peer(self) -> str:
        return self.url


#: The kind of a destination without a ``kind`` key.
DEFAULT_DESTINATION_KIND = "dimse"

#: The configuration model of each destination kind, by the ``kind`` key that selects it.
#: The schema half of the kinds registered in ``node.export.senders`` (which adds a kind
#: here and its sender there in one call); the two built-in kinds are known without it.
DESTINATION_MODELS: dict[str, type[DestinationBase]] = {
    "dimse": DestinationSettings,
    "dicomweb": DicomWebDestinationSettings,
}


def destination_kind(destination: DestinationBase) -> str:
    """The registered kind whose model ``destination`` is."""
    for kind, model in DESTINATION_MODELS.items():
        if type(destination) is model:
            return kind
    raise LookupError(f"{type(destination).__name__} is not a registered destination kind")


def _validate_destination(value: Any, info: ValidationInfo) -> DestinationBase:
    """Validate ``value`` with the model of its ``kind`` (:data:`DEFAULT_DESTINATION_KIND`
    when absent); a model instance of a registered kind passes as it is."""
    if isinstance(value, DestinationBase) and type(value) in DESTINATION_MODELS.values():
        return value
    if not isinstance(value, Mapping):
        raise PydanticCustomError("destination_type", "a destination is a mapping of fields")
    kind = value.get("kind", DEFAULT_DESTINATION_KIND)
    model = DESTINATION_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(sorted(DESTINATION_MODELS))
        message = f"unknown destination kind {kind!r} (known: {known})"
        raise PydanticCustomError("destination_kind", message)
    data = dict(value)
    if "kind" not in model.model_fields:  # the model needs no key to tell it apart
        data.pop("kind", None)
    return model.model_validate(data, context=info.context)


if TYPE_CHECKING:
    AnyDestination = DestinationBase
else:
    #: A destination of any registered kind, chosen by its ``kind`` key (DIMSE C-STORE
    #: without one, ``kind: dicomweb`` for STOW-RS, or a kind registered later).
    AnyDestination = Annotated[
        SerializeAsAny[DestinationBase], PlainValidator(_validate_destination)
    ]
