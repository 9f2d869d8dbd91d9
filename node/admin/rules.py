"""Routing rules kept in the state database, versioned, and tested before they are saved.

Which rules count
-----------------
The YAML configuration's ``rules`` *seed* the database the first time a node
starts on an empty data directory. From then on the database is
authoritative: rules are edited through the API, the console or the CLI, and
the YAML ``rules`` are ignored (a warning at start-up says so when they
differ). To start again from the YAML, remove every rule (or use a fresh
data directory).

Every change writes a new row in ``rule_versions`` (who, when, the whole
definition), so any earlier version can be restored; the rule's ``version``
counts up. The dispatcher reads the rules from the database on every
completed series, so a saved change applies to the next series.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pydicom
import yaml
from pydantic import ValidationError
from pydicom.dataset import Dataset

from node.config import RuleSettings
from node.errors import InvalidInput
from node.routing import HeaderSubject, MappingSubject, Subject, evaluate

log = logging.getLogger(__name__)

# -- validation ---------------------------------------------------------------------------


def _field_of(location: Sequence[str | int], message: str) -> str:
    # A condition error names its own key path ("match.Foo.regex: ...").
    if message.startswith("match") and ":" in message:
        return message.split(":", 1)[0]
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "rule"


def parse_rule(
    data: Mapping[str, Any] | Any,
    *,
    plugins: Iterable[str],
    destinations: Iterable[str],
    taken_names: Iterable[str] = (),
) -> RuleSettings:
    """Validate a rule given as a mapping; raise :class:`InvalidInput` naming each field.

    ``match`` may be a mapping or a YAML/JSON text of one (what the console's editor sends).
    """
    if not isinstance(data, Mapping):
        raise InvalidInput("a rule must be a JSON object", [("rule", "expected an object")])
    raw = dict(data)
    problems: list[tuple[str, str]] = []
    if isinstance(raw.get("match"), str):
        try:
            raw["match"] = yaml.safe_load(raw["match"]) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise InvalidInput(
                f"match: not valid YAML{where}: {problem}",
                [("match", f"not valid YAML{where}: {problem}")],
            ) from None
    try:
        rule = RuleSettings.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            context = error.get("ctx") or {}
            cause = context.get("error")
            message = str(cause) if cause is not None else error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append((_field_of(tuple(error["loc"]), message), message))
        rule = None
    # References are checked even when the shape is wrong, so every problem shows at once.
    reported = {field for field, _ in problems}
    plugin = raw.get("plugin")
    known_plugins = set(plugins)
    if isinstance(plugin, str) and plugin not in known_plugins and "plugin" not in reported:
        names = ", ".join(sorted(known_plugins)) or "none installed"
        problems.append(("plugin", f"unknown plugin {plugin!r} (installed: {names})"))
    send_to = raw.get("send_to")
    known_destinations = set(destinations)
    for index, name in enumerate(send_to if isinstance(send_to, list) else []):
        if isinstance(name, str) and name not in known_destinations:
            names = ", ".join(sorted(known_destinations)) or "none defined"
            problems.append((f"send_to[{index}]", f"unknown destination {name!r} (known: {names})"))
    if isinstance(raw.get("name"), str) and raw["name"] in set(taken_names):
        problems.append(("name", f"another rule is already named {raw['name']!r}"))
    if problems or rule is None:
        raise InvalidInput(
            "the rule is invalid: " + "; ".join(f"{f}: {m}" for f, m in problems), problems
        )
    return rule


# -- evaluation -------------------------------------------------------------------------


def subject_from_dicom_bytes(data: bytes, calling_ae: str = "", called_ae: str = "") -> Subject:
    """A rule subject from an uploaded DICOM file (pixel data is not read)."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception as exc:
        raise InvalidInput(
            f"the file is not DICOM: {exc}", [("file", "not a DICOM file")]
        ) from None
    if len(dataset) == 0:
        raise InvalidInput("the file holds no DICOM attributes", [("file", "not a DICOM file")])
    return HeaderSubject(dataset, calling_ae=calling_ae, called_ae=called_ae)


def subject_from_json(header: Mapping[str, Any]) -> Subject:
    """A rule subject from ``{"Modality": "CT", ...}`` or the DICOM JSON model.

    ``calling_ae`` and ``called_ae`` may be given as keys.
    """
    if not isinstance(header, Mapping) or not header:
        raise InvalidInput("the header must be a non-empty JSON object", [("header", "empty")])
    if all(len(str(key)) == 8 and _is_hex(str(key)) for key in header):
        try:
            dataset = Dataset.from_json(dict(header))
        except Exception as exc:
            raise InvalidInput(
                f"not a valid DICOM JSON header: {exc}", [("header", str(exc))]
            ) from None
        return HeaderSubject(dataset)
    return MappingSubject(dict(header))


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def explain(rules: Sequence[RuleSettings], subject: Subject) -> list[dict[str, Any]]:
    """For each rule: does it match, would it fire (enabled and matching), what failed."""
    results = []
    for rule in rules:
        outcome = evaluate(rule.name, rule.conditions, subject)
        results.append(
            {
                "rule": rule.name,
                "plugin": rule.plugin,
                "enabled": rule.enabled,
                "matched": outcome.matched,
                "fires": outcome.matched and rule.enabled,
                "failed": list(outcome.failed),
            }
        )
    return results


def firing(rules: Sequence[RuleSettings], subject: Subject) -> list[str]:
    return [r["rule"] for r in explain(rules, subject) if r["fires"]]


HeaderLoader = Callable[[str], Subject | None]
