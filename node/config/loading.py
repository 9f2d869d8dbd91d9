"""Reading, validating and checking a configuration file."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from node.config.base import _KeyedError
from node.config.defaults import DEFAULT_CONFIG
from node.config.settings import Settings
from node.errors import ConfigError

#: Environment variables that override configuration keys.
ENV_OVERRIDES: Mapping[str, tuple[str, str]] = {
    "AINODE_DICOM_PORT": ("node", "dicom_port"),
    "AINODE_HTTP_PORT": ("node", "http_port"),
    "AINODE_DATA_DIR": ("node", "data_dir"),
    "AINODE_LOG_LEVEL": ("logging", "level"),
    "AINODE_LOG_FORMAT": ("logging", "format"),
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
        if location[:1] == ("sources",) and len(location) > 2:
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
    path: Path,
    known_plugins: Collection[str],
    *,
    model_problems: Callable[[Settings], Mapping[str, str]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings | None, list[tuple[str, str]]]:
    """Every problem of a configuration file in one pass, as ``(key path, message)``.

    Checks the YAML, the schema (all field errors, including regexes of ``match``) and
    the references of rules to destinations and plugins. Returns the settings when the
    schema is valid.

    Parameters
    ----------
    path
        The configuration file.
    known_plugins
        Names of the installed plugins (those that failed to load included): rules may
        name these or a configured model.
    model_problems
        Loads each configured model of valid settings (its files, labels and result
        template) and returns ``{model name: why it failed}``; the caller owns the
        plugin registry, which sits above the configuration.
    environ
        Environment for overrides; ``os.environ`` when omitted.
    """
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
    problems: list[tuple[str, str]] = []
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems.extend(_schema_problems(exc))
    for problem in _reference_problems(merged, set(known_plugins)):
        if problem not in problems:
            problems.append(problem)
    if settings is not None and model_problems is not None:
        failed = model_problems(settings)
        for name in sorted(settings.models):
            if name in failed:
                problems.append((f"models.{name}", failed[name]))
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
