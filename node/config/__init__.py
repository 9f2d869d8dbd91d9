"""One typed configuration, loaded and validated once at start-up.

The YAML file is validated with pydantic (unknown keys are errors); a bad file
raises :class:`~node.errors.ConfigError` whose message names the file, the key
path and what is wrong. Environment variables override a few keys so a
container or a test can move ports and data without editing the file.
"""

from node.config.base import AE_TITLE_PATTERN, CHECK_FILES
from node.config.completion import CompletionSettings
from node.config.defaults import (
    BUILT_IN_CHEST_RULE,
    BUILT_IN_FUNDUS_DEMO_RULE,
    BUILT_IN_MAMMO_DEMO_RULE,
    BUILT_IN_ORGANS_DEMO_RULE,
    DEFAULT_CONFIG,
)
from node.config.destinations import (
    AnyDestination,
    DestinationSettings,
    DicomWebDestinationSettings,
    DicomWebEndpoint,
    HttpAuthSettings,
    ResultProfileSettings,
    RetrySettings,
    TlsSettings,
)
from node.config.dicom import DicomSettings
from node.config.dicomweb import ApiTokenSettings, DicomWebSettings
from node.config.executor import ExecutorSettings
from node.config.loading import (
    ENV_OVERRIDES,
    check_plugins_known,
    config_problems,
    load_settings,
    settings_from_mapping,
)
from node.config.logs import LoggingSettings
from node.config.models import (
    AcceptsSettings,
    BundleModelSettings,
    ModelSettings,
    OnnxModelSettings,
    Plane,
    ResourceSettings,
    TorchScriptModelSettings,
    ValidatedInputSettings,
    WindowSettings,
)
from node.config.network import (
    AcceptSettings,
    DicomTlsClientSettings,
    DicomTlsListenerSettings,
    HttpsSettings,
    NodeSettings,
)
from node.config.quality import QUALITY_CHECKS, QualityAction, QualitySettings
from node.config.retention import RetentionSettings
from node.config.rules import RuleSettings
from node.config.security import SecuritySettings
from node.config.settings import Settings
from node.config.sources import (
    AnySource,
    DicomWebSourceSettings,
    DimseSourceSettings,
    WorklistSourceSettings,
)
from node.config.workers import WorkerSettings
from node.config.worklist import WorklistSettings

__all__ = [
    "AE_TITLE_PATTERN",
    "BUILT_IN_CHEST_RULE",
    "BUILT_IN_FUNDUS_DEMO_RULE",
    "BUILT_IN_MAMMO_DEMO_RULE",
    "BUILT_IN_ORGANS_DEMO_RULE",
    "CHECK_FILES",
    "DEFAULT_CONFIG",
    "ENV_OVERRIDES",
    "QUALITY_CHECKS",
    "AcceptSettings",
    "AcceptsSettings",
    "AnyDestination",
    "AnySource",
    "ApiTokenSettings",
    "BundleModelSettings",
    "CompletionSettings",
    "DestinationSettings",
    "DicomSettings",
    "DicomTlsClientSettings",
    "DicomTlsListenerSettings",
    "DicomWebDestinationSettings",
    "DicomWebEndpoint",
    "DicomWebSettings",
    "DicomWebSourceSettings",
    "DimseSourceSettings",
    "ExecutorSettings",
    "HttpAuthSettings",
    "HttpsSettings",
    "LoggingSettings",
    "ModelSettings",
    "NodeSettings",
    "OnnxModelSettings",
    "Plane",
    "QualityAction",
    "QualitySettings",
    "ResourceSettings",
    "ResultProfileSettings",
    "RetentionSettings",
    "RetrySettings",
    "RuleSettings",
    "SecuritySettings",
    "Settings",
    "TlsSettings",
    "TorchScriptModelSettings",
    "ValidatedInputSettings",
    "WindowSettings",
    "WorkerSettings",
    "WorklistSettings",
    "WorklistSourceSettings",
    "check_plugins_known",
    "config_problems",
    "load_settings",
    "settings_from_mapping",
]
