"""One typed configuration, loaded and validated once at start-up.

The YAML file is validated with pydantic (unknown keys are errors); a bad file
raises :class:`~node.errors.ConfigError` whose message names the file, the key
path and what is wrong. Environment variables override a few keys so a
container or a test can move ports and data without editing the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from node.contract.kinds import DEFAULT_PROFILE, check_profile, profile_tags
from node.errors import ConfigError
from node.routing import Condition, parse_conditions
from node.tls import client_context, server_context

#: Environment variables that override configuration keys.
ENV_OVERRIDES: Mapping[str, tuple[str, str]] = {
    "AINODE_DICOM_PORT": ("node", "dicom_port"),
    "AINODE_HTTP_PORT": ("node", "http_port"),
    "AINODE_DATA_DIR": ("node", "data_dir"),
    "AINODE_LOG_LEVEL": ("logging", "level"),
    "AINODE_LOG_FORMAT": ("logging", "format"),
}

#: Validation-context key: ``{CHECK_FILES: False}`` skips reading TLS files (stored values).
CHECK_FILES = "check_tls_files"

AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # printable ASCII without backslash
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    #: A client must finish its TLS handshake within this time (handshakes are accepted
    #: one at a time, so a peer that connects and stays silent holds the port this long).
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
    #: Largest PDU the SCP accepts; 128 KiB or more speeds up large images.
    max_pdu: int = Field(131072, ge=16384)
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


class RetentionSettings(_Strict):
    """What the node deletes from its spool and results, and when (see README "Retention").

    Results default to 30 days, longer than the 7 of the spool: they are what a
    site asks for again, and are re-creatable only while the spool still holds
    the series, so they need not outlive it by much.
    """

    enabled: bool = True
    #: Days after a series' last job finished before its spooled instances go.
    spool_days: float = Field(7, gt=0)
    #: Days after a series' last job finished before its result files go.
    results_days: float = Field(30, gt=0)
    #: Days a series whose last job failed is kept (inputs needed to retry it).
    failed_days: float = Field(30, gt=0)
    #: Below this much free disk (MB), the oldest finished series go first, whatever
    #: their age; must be above ``node.min_free_disk_mb``, where instances are refused.
    high_watermark_mb: int = Field(2048, ge=0)
    #: Cron expression (minute hour day month weekday) of the nightly pass.
    schedule: str = "30 2 * * *"
    #: Seconds between free-space checks against the high watermark.
    watermark_check_seconds: int = Field(60, ge=5)
    #: Never delete a series that has a shadow-mode job (its results feed the comparison).
    keep_shadow: bool = True

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as error:
            raise ValueError(
                f"not a cron expression (minute hour day month weekday): {error}"
            ) from error
        return value


class CompletionSettings(_Strict):
    """When a series counts as complete."""

    series_quiet_seconds: float = Field(10.0, gt=0)
    #: How often the completion check runs.
    poll_seconds: float = Field(1.0, gt=0)
    #: How long a series waits instead of ``series_quiet_seconds`` when its sender was cut
    #: off (its association aborted, or the node restarted while it was receiving), so the
    #: sender's retry can complete it. A later association that ends normally, or the
    #: sender's instance count where it can be asked, completes it sooner.
    aborted_grace_seconds: float = Field(300.0, ge=0)
    #: A series still receiving this long after its generation's first instance (a sender
    #: that trickles, so the quiet period never comes) completes anyway; 0 turns it off.
    max_receiving_seconds: float = Field(3600.0, ge=0)
    #: At most this many generations of one series per ``generation_window_seconds``
    #: (instances that keep arriving after completion); further ones wait; 0: unbounded.
    max_generations_per_hour: int = Field(6, ge=0)
    #: The window of ``max_generations_per_hour`` (an hour; shorter in tests).
    generation_window_seconds: float = Field(3600.0, gt=0)


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


class DicomWebSourceSettings(DicomWebEndpoint):
    """A DICOMweb server the node can query (QIDO-RS) and pull from (WADO-RS)."""

    #: The AE title this PACS uses when it pushes by C-STORE: rules see it as ``calling_ae``
    #: for pulled instances, and pushes from it get the count check (``count_check``).
    ae_title: str | None = Field(None, pattern=AE_TITLE_PATTERN)
    #: Complete a series pushed by this sender as soon as the node holds as many
    #: instances as the sender reports (NumberOfSeriesRelatedInstances).
    count_check: bool = True


class DimseSourceSettings(_Strict):
    """A DICOM peer the node can C-FIND and retrieve from (C-GET, or C-MOVE to itself)."""

    kind: Literal["dimse"]
    ae_title: str = Field(pattern=AE_TITLE_PATTERN)
    host: str
    port: Port
    #: ``get``: C-GET on one association; ``move``: C-MOVE to the node's own AE title
    #: (the peer must know the node's address).
    retrieve: Literal["get", "move"] = "get"
    count_check: bool = True
    timeout_seconds: float = Field(30.0, gt=0)
    #: DICOM TLS to this peer (omit for plain DICOM).
    tls: DicomTlsClientSettings | None = None


#: A source: ``kind: dicomweb`` or ``kind: dimse``.
AnySource = Annotated[DicomWebSourceSettings | DimseSourceSettings, Field(discriminator="kind")]


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


#: What the input-quality gate does when a check fails: run anyway, run and record a
#: warning (in the job and in the SR), or skip the job (the reason shows on the job).
QualityAction = Literal["run", "warn", "skip"]

#: The checks of the input-quality gate (``node.engine.quality``), by name.
QUALITY_CHECKS = (
    "modality",
    "sop_class",
    "slice_thickness",
    "pixel_spacing",
    "kernel",
    "contrast",
    "photometric",
    "bit_depth",
    "noise",
    "missing_slices",
    "duplicate_slices",
    "metal",
    "streaks",
    "clipping",
)


class QualitySettings(_Strict):
    """Per rule: what the input-quality gate does when the input differs from what the
    routine was validated on (``on_fail``), with per-check overrides (``checks``)."""

    on_fail: QualityAction = "warn"
    #: Check name → action, overriding ``on_fail`` for that check.
    checks: dict[str, QualityAction] = Field(default_factory=dict)

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, value: dict[str, QualityAction]) -> dict[str, QualityAction]:
        unknown = sorted(set(value) - set(QUALITY_CHECKS))
        if unknown:
            raise ValueError(
                f"unknown quality check {', '.join(unknown)} (known: {', '.join(QUALITY_CHECKS)})"
            )
        if value.get("missing_slices", "skip") != "skip":
            raise ValueError(
                "missing_slices can only skip: a series with a gap has no regular grid to run on"
            )
        return value

    def action(self, check: str) -> QualityAction:
        """The action for a failed ``check`` (``missing_slices`` always skips)."""
        if check == "missing_slices":
            return "skip"
        return self.checks.get(check, self.on_fail)


class RuleSettings(_Strict):
    """A routing rule: match conditions, a plugin, and where the results go."""

    name: str = Field(min_length=1)
    match: dict[str, Any] = Field(default_factory=dict)
    plugin: str
    send_to: list[str] = Field(default_factory=list)
    priority: int = Field(5, ge=0, le=9)
    enabled: bool = True
    #: Shadow mode: jobs run and their results are stored and listed, but nothing is sent.
    shadow: bool = False
    #: The input-quality gate's actions (it applies when the plugin declares ``validated_on``).
    quality: QualitySettings = QualitySettings()

    @field_validator("match")
    @classmethod
    def _conditions_parse(cls, value: dict[str, Any]) -> dict[str, Any]:
        parse_conditions(value)  # raises ValueError with the offending key path
        return value

    @property
    def conditions(self) -> list[Condition]:
        return parse_conditions(self.match)


class WorkerSettings(_Strict):
    """Inference workers: one long-lived worker thread per device."""

    #: ``auto``: one worker per visible CUDA device, else one CPU worker; ``cuda``: every
    #: visible CUDA device; ``cpu``; or one device such as ``cuda:1``. Pin GPUs with
    #: ``CUDA_VISIBLE_DEVICES`` (torch only sees those) or list them in ``devices``.
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    #: Explicit devices (one worker each), e.g. ``["cuda:0", "cuda:1"]``; overrides ``device``.
    devices: list[str] = Field(default_factory=list)
    #: Threads for CPU inference; 0 picks ``cores - 1`` (at least 1) so receiving keeps a core.
    cpu_threads: int = Field(0, ge=0)
    #: Seconds a job may run before it is failed.
    job_timeout_seconds: float = Field(1800.0, gt=0)
    #: Device memory the loaded models of one GPU may use (sum of their declared
    #: ``gpu_memory_mb``); least recently used models are unloaded beyond it.
    #: Default: 80 % of the device's memory.
    gpu_memory_budget_mb: int | None = Field(None, gt=0)
    #: Read the next queued series while the current job runs.
    prefetch: bool = True


Plane = Literal["axial", "coronal", "sagittal"]


def _axial_only() -> list[Plane]:
    return ["axial"]


class AcceptsSettings(_Strict):
    """What a configured model accepts (see ``node.contract.plugin.Accepts``)."""

    modalities: list[str] = Field(default_factory=lambda: ["CT"])
    body_parts: list[str] = Field(default_factory=list)
    min_slices: int = Field(1, ge=1)
    max_slices: int | None = Field(None, ge=1)
    slice_spacing_mm: tuple[float, float] = (0.0, 1e9)
    pixel_spacing_mm: tuple[float, float] = (0.0, 1e9)
    min_matrix: int = Field(1, ge=1)
    planes: list[Plane] = Field(default_factory=_axial_only)
    max_obliquity_deg: float = Field(90.0, ge=0, le=90)


class ValidatedInputSettings(_Strict):
    """The input a configured model was validated on (see ``node.contract.plugin.ValidatedInput``).

    Empty lists and absent ranges are not checked.
    """

    modalities: list[str] = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)
    slice_thickness_mm: tuple[float, float] | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    #: ConvolutionKernel values, case-insensitive.
    kernels: list[str] = Field(default_factory=list)
    #: ``present``: ContrastBolusAgent must be set; ``absent``: must not; ``any``.
    contrast: Literal["any", "present", "absent"] = "any"
    photometric_interpretations: list[str] = Field(default_factory=list)
    min_bits_stored: int = Field(0, ge=0, le=32)
    #: Noise (standard deviation, HU for CT) measured in homogeneous tissue.
    noise: tuple[float, float] | None = None
    max_duplicate_slices: int = Field(0, ge=0)
    #: Fraction of voxels above ``metal_threshold`` (HU).
    max_metal_fraction: float = Field(1e-4, ge=0, le=1)
    metal_threshold: float = 2500.0
    #: Worst slice's high-frequency energy over the series' median (streaks, motion).
    max_streak_index: float = Field(3.0, gt=0)
    #: Fraction of pixels at the stored minimum or maximum value.
    max_clipped_fraction: float = Field(0.002, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> ValidatedInputSettings:
        for key in ("slice_thickness_mm", "pixel_spacing_mm", "noise"):
            value = getattr(self, key)
            if value is not None and value[0] > value[1]:
                raise ValueError(f"{key}: the lower bound {value[0]} exceeds {value[1]}")
        return self


class ResourceSettings(_Strict):
    needs_gpu: bool = False
    gpu_memory_mb: int = Field(0, ge=0)


class _ModelBase(_Strict):
    """Fields every configured model has."""

    #: Template (file stem in the templates directory) the model's labels are coded with.
    template: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    accepts: AcceptsSettings = AcceptsSettings()
    resources: ResourceSettings = ResourceSettings()
    #: Output label name → template label value; unnamed labels are matched to the
    #: template's segments by tracking id or label (case, spaces, ``-`` and ``_`` ignored).
    label_values: dict[str, int] = Field(default_factory=dict)
    #: Windows per forward pass (overrides the model's / bundle's value).
    sw_batch_size: int | None = Field(None, ge=1)
    #: Mixed precision (float16 autocast) on CUDA; the CPU always runs float32.
    amp: bool = True
    #: The input the model was validated on (the input-quality gate compares against it).
    validated_on: ValidatedInputSettings | None = None


class WindowSettings(_Strict):
    """Intensity scaling like MONAI ``ScaleIntensityRange``."""

    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True


class _NetworkModelBase(_ModelBase):
    """A segmentation network the node's engine runs: file, input geometry and labels."""

    #: Narrowed to a literal by each model type (declared here to keep the field order).
    type: str
    path: Path
    version: str = "1"
    spacing_mm: tuple[float, float, float]
    axcodes: str = Field("RAS", pattern=r"^[LRlr][APap][SIsi]$|^[A-Za-z]{3}$")
    window: WindowSettings
    #: Output channel names in order; channel 0 is the background.
    labels: list[str] = Field(min_length=2)
    roi_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = Field(0.25, ge=0, lt=1)


class TorchScriptModelSettings(_NetworkModelBase):
    """A TorchScript segmentation network with declared input geometry and labels."""

    type: Literal["torchscript"]


class BundleModelSettings(_ModelBase):
    """A MONAI bundle directory (``configs/``, ``models/``) run with its own transforms."""

    type: Literal["monai_bundle"]
    path: Path
    #: Config file inside ``configs/`` (default: ``inference.json`` or ``inference.yaml``).
    config: str | None = None


class OnnxModelSettings(_NetworkModelBase):
    """An ONNX segmentation network run with onnxruntime, declared like a TorchScript one.

    Runs on ``CUDAExecutionProvider`` when onnxruntime has it and the worker is on a
    GPU, else on ``CPUExecutionProvider``.
    """

    type: Literal["onnx"]
    #: Graph input and output names (default: the graph's only input and its first output).
    input_name: str | None = None
    output_name: str | None = None


ModelSettings = Annotated[
    TorchScriptModelSettings | BundleModelSettings | OnnxModelSettings,
    Field(discriminator="type"),
]


class SecuritySettings(_Strict):
    """Who may use the admin API and web console.

    Everything needs a login (session cookie) or an API token (``Authorization:
    Bearer ...``) except ``/healthz``, ``/readyz`` and, unless turned off here,
    ``/metrics``.
    """

    #: Serve Prometheus ``/metrics`` without login (scrapers rarely log in).
    public_metrics: bool = True
    #: A login session ends this many minutes after it started.
    session_minutes: float = Field(480.0, gt=0)
    #: ... or after this many minutes without a request (at least 1).
    session_idle_minutes: float = Field(60.0, ge=1)
    #: Mark the session cookie ``Secure`` (set when the console is served over HTTPS).
    secure_cookies: bool = False
    #: Wrong passwords (per user or per client address) before the login is locked.
    login_max_failures: int = Field(5, ge=1)
    #: How long a locked login stays locked.
    login_lockout_minutes: float = Field(15.0, gt=0)
    #: First delay after a wrong password; doubles per failure (at most 5 s).
    login_delay_seconds: float = Field(0.5, ge=0)


class LoggingSettings(_Strict):
    #: ``debug`` also lets the libraries (highdicom, pydicom, pynetdicom, …) log below WARNING.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``text`` (``<time> <LEVEL> <logger>: <message>``) or ``json`` (one object a line).
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Settings(_Strict):
    """The whole configuration."""

    node: NodeSettings = NodeSettings()
    completion: CompletionSettings = CompletionSettings()
    retention: RetentionSettings = RetentionSettings()
    destinations: dict[str, AnyDestination] = Field(default_factory=dict)
    rules: list[RuleSettings] = Field(default_factory=list)
    #: PACS the node can query and pull from (``POST /api/pull``, count check).
    sources: dict[str, AnySource] = Field(default_factory=dict)
    dicomweb: DicomWebSettings = DicomWebSettings()
    #: Named model instances (configuration only, no code); rules use the name as ``plugin``.
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    workers: WorkerSettings = WorkerSettings()
    security: SecuritySettings = SecuritySettings()
    logging: LoggingSettings = LoggingSettings()
    #: The site's result templates, looked up before the shipped ``dicom_sr_templates``.
    templates_dir: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_destinations(cls, data: Any) -> Any:
        """``node.accept: destinations``: allow the C-STORE destinations' AE from their host."""
        node = data.get("node") if isinstance(data, dict) else None
        if not isinstance(node, dict) or node.get("accept") != "destinations":
            return data
        entries = []
        for name, dest in (data.get("destinations") or {}).items():
            if not isinstance(dest, dict) or dest.get("kind", "dimse") != "dimse":
                continue
            try:
                hosts = sorted({info[4][0] for info in socket.getaddrinfo(dest["host"], None)})
            except (KeyError, OSError) as exc:
                raise _KeyedError(
                    ("destinations", name, "host"), f"cannot resolve for node.accept: {exc}"
                ) from None
            entries.append({"ae_title": dest.get("ae_title"), "hosts": hosts})
        return {**data, "node": {**node, "accept": entries}}

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        for model in self.models:
            if not re.match(r"^[a-z0-9][a-z0-9_.-]{0,63}$", model):
                raise _KeyedError(
                    ("models", model),
                    "model names are 1-64 lower-case letters, digits, '_', '.' or '-'",
                )
        if self.retention.high_watermark_mb and (
            self.retention.high_watermark_mb <= self.node.min_free_disk_mb
        ):
            raise _KeyedError(
                ("retention", "high_watermark_mb"),
                "must be above node.min_free_disk_mb, so old series go before instances are"
                " refused",
            )
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        for index, rule in enumerate(self.rules):
            for dest in rule.send_to:
                if dest not in self.destinations:
                    known = ", ".join(sorted(self.destinations)) or "none defined"
                    raise _KeyedError(
                        ("rules", index, "send_to"),
                        f"unknown destination {dest!r} (known: {known})",
                    )
        return self

    @property
    def spool_dir(self) -> Path:
        return self.node.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.node.data_dir / "results"

    @property
    def database_path(self) -> Path:
        return self.node.data_dir / "state.sqlite3"


class _KeyedError(ValueError):
    """A validation error that knows the key path it belongs to."""

    def __init__(self, location: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.location = location


#: The built-in routing: chest CT series go to the lung routine.
BUILT_IN_CHEST_RULE: dict[str, Any] = {
    "name": "chest-ct",
    "match": {"Modality": "CT", "SeriesDescription": {"regex": "(?i)chest|thorax|lung"}},
    "plugin": "ct_lungs",
    "send_to": [],
}


def _demo_rule(name: str, match: dict[str, Any], plugin: str) -> dict[str, Any]:
    """A built-in routing to a demonstration model: nowhere to send, priority 6."""
    return {"name": name, "match": match, "plugin": plugin, "send_to": [], "priority": 6}


#: The built-in demonstration routing: abdomen/body CT series go to the ``ct_organs``
#: demonstration model (trained on synthetic data; not for clinical use).
BUILT_IN_ORGANS_DEMO_RULE = _demo_rule(
    "ct-organs-demo",
    {"Modality": "CT", "SeriesDescription": {"regex": "(?i)abdom|body|trunk|organ"}},
    "ct_organs",
)

#: The built-in demonstration routing for colour fundus photographs (OP 8-bit): the
#: ``op_fundus_classifier`` demonstration model (synthetic data; not for clinical use).
BUILT_IN_FUNDUS_DEMO_RULE = _demo_rule(
    "op-fundus-demo",
    {"SOPClassUID": "OphthalmicPhotography8BitImageStorage"},
    "op_fundus_classifier",
)

#: The built-in demonstration routing for For Presentation mammograms: the
#: ``mg_mass_detector`` demonstration model (synthetic data; not for clinical use).
BUILT_IN_MAMMO_DEMO_RULE = _demo_rule(
    "mg-mass-demo",
    {"SOPClassUID": "DigitalMammographyXRayImageStorageForPresentation"},
    "mg_mass_detector",
)

#: The configuration ``make run`` uses when no file is given.
DEFAULT_CONFIG: dict[str, Any] = {
    "node": {"ae_title": "AINODE", "dicom_port": 11112, "http_port": 8080, "data_dir": "./var"},
    "completion": {"series_quiet_seconds": 10},
    "destinations": {},
    "rules": [
        BUILT_IN_CHEST_RULE,
        BUILT_IN_ORGANS_DEMO_RULE,
        BUILT_IN_FUNDUS_DEMO_RULE,
        BUILT_IN_MAMMO_DEMO_RULE,
    ],
}


def _format_location(location: tuple[str | int, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    merged = {
        key: (dict(value) if isinstance(value, dict) else value) for key, value in raw.items()
    }
    for variable, (section, key) in ENV_OVERRIDES.items():
        if variable in environ and environ[variable] != "":
            merged.setdefault(section, {})
            if not isinstance(merged[section], dict):
                continue  # the type error is reported by validation
            merged[section][key] = environ[variable]
    return merged


def settings_from_mapping(
    raw: Mapping[str, Any], *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate an already-parsed configuration mapping.

    Parameters
    ----------
    raw
        The parsed YAML document.
    source
        Name used in error messages (normally the file path).
    environ
        Environment for overrides; ``os.environ`` when omitted.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the configuration must be a mapping of sections")
    merged = _apply_env(dict(raw), os.environ if environ is None else environ)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = [f"{source}: {where}: {message}" for where, message in _schema_problems(exc)]
        raise ConfigError("invalid configuration\n  " + "\n  ".join(problems)) from None


def _schema_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Every error of a failed validation as ``(key path, message)``."""
    problems = []
    for error in exc.errors():
        location: tuple[str | int, ...] = tuple(error["loc"])
        if location[:1] in (("destinations",), ("sources",)) and len(location) > 2:
            location = (*location[:2], *location[3:])  # drop the union's tag
        context = error.get("ctx", {}) or {}
        cause = context.get("error")
        if isinstance(cause, _KeyedError):
            location = cause.location
            message = str(cause)
        elif error["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = str(cause) if cause is not None else error["msg"]
        problems.append((_format_location(location), message))
    return problems


def _reference_problems(raw: Mapping[str, Any], known_plugins: set[str]) -> list[tuple[str, str]]:
    """Rules naming destinations or plugins that do not exist, read from the raw mapping.

    Pydantic runs the model-level reference check only when every field is valid
    (and stops at the first); this checks the raw file so one run reports them all.
    """
    destinations = raw.get("destinations")
    dest_names = set(destinations) if isinstance(destinations, Mapping) else set()
    models = raw.get("models")
    plugin_names = known_plugins | (set(models) if isinstance(models, Mapping) else set())
    rules = raw.get("rules")
    problems: list[tuple[str, str]] = []
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, Mapping):
            continue
        send_to = rule.get("send_to")
        for dest in send_to if isinstance(send_to, list) else []:
            if isinstance(dest, str) and dest not in dest_names:
                known = ", ".join(sorted(dest_names)) or "none defined"
                problems.append(
                    (f"rules[{index}].send_to", f"unknown destination {dest!r} (known: {known})")
                )
        plugin = rule.get("plugin")
        if isinstance(plugin, str) and plugin not in plugin_names:
            names = ", ".join(sorted(plugin_names)) or "none installed"
            problems.append(
                (f"rules[{index}].plugin", f"unknown plugin {plugin!r} (installed: {names})")
            )
    return problems


def config_problems(
    path: Path, *, environ: Mapping[str, str] | None = None
) -> tuple[Settings | None, list[tuple[str, str]]]:
    """Every problem of a configuration file in one pass, as ``(key path, message)``.

    Checks the YAML, the schema (all field errors, including regexes of ``match``),
    the references of rules to destinations and plugins, and loads each configured
    model (its files, labels and result template). Returns the settings when the
    schema is valid.
    """
    from node.orchestration.registry import PluginRegistry

    env = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        return None, [("(file)", f"cannot read configuration: {exc.strerror}")]
    except yaml.YAMLError as exc:
        return None, [("(file)", f"not valid YAML: {exc}")]
    if not isinstance(raw, Mapping):
        return None, [("(top level)", "the configuration must be a mapping of sections")]
    merged = _apply_env(dict(raw), env)
    registry = PluginRegistry.discover()
    problems: list[tuple[str, str]] = []
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems.extend(_schema_problems(exc))
    for problem in _reference_problems(merged, registry.names | set(registry.errors)):
        if problem not in problems:
            problems.append(problem)
    if settings is not None:
        registry.configure(settings.models, settings.templates_dir)
        for name in sorted(settings.models):
            if name in registry.errors:
                problems.append((f"models.{name}", registry.errors[name]))
    return settings, problems


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load the configuration file (or the embedded defaults) and validate it.

    ``AINODE_CONFIG`` names the file when ``path`` is not given.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("AINODE_CONFIG"):
        path = Path(env["AINODE_CONFIG"])
    if path is None:
        return settings_from_mapping(DEFAULT_CONFIG, source="<embedded defaults>", environ=env)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return settings_from_mapping(raw, source=str(path), environ=env)


def check_plugins_known(settings: Settings, known: set[str], *, source: str) -> None:
    """Fail start-up when a rule names a plugin that is not installed."""
    for index, rule in enumerate(settings.rules):
        if rule.plugin not in known:
            names = ", ".join(sorted(known)) or "none installed"
            raise ConfigError(
                f"invalid configuration\n  {source}: rules[{index}].plugin: "
                f"unknown plugin {rule.plugin!r} (installed: {names})"
            )


__all__ = [
    "BUILT_IN_CHEST_RULE",
    "BUILT_IN_FUNDUS_DEMO_RULE",
    "BUILT_IN_MAMMO_DEMO_RULE",
    "BUILT_IN_ORGANS_DEMO_RULE",
    "DEFAULT_CONFIG",
    "AnyDestination",
    "AnySource",
    "ApiTokenSettings",
    "BundleModelSettings",
    "CompletionSettings",
    "DestinationSettings",
    "DicomTlsClientSettings",
    "DicomTlsListenerSettings",
    "DicomWebDestinationSettings",
    "DicomWebSettings",
    "DicomWebSourceSettings",
    "DimseSourceSettings",
    "HttpsSettings",
    "NodeSettings",
    "OnnxModelSettings",
    "QualitySettings",
    "RuleSettings",
    "SecuritySettings",
    "Settings",
    "TorchScriptModelSettings",
    "ValidatedInputSettings",
    "check_plugins_known",
    "config_problems",
    "load_settings",
    "settings_from_mapping",
]
