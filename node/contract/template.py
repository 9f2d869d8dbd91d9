"""Result templates: how a routine's label map and measurements become coded DICOM content.

A template is a versioned YAML file in ``dicom_sr_templates/`` (see its README). It is
parsed into strict pydantic models (unknown keys rejected), then checked against the
DICOM code dictionaries shipped with pydicom: segment categories must come from
CID 7150, segment types from CID 7151, type modifiers from CID 244 (laterality), and
a SNOMED CT or DCM code whose value pydicom knows must carry the meaning DICOM gives
it. Units are UCUM codes from :data:`UCUM_UNITS`. Any problem raises
:class:`~node.errors.TemplateError` naming the file, the path inside it
(``segments[1].type.value``) and the reason.

The format's models are in :mod:`node.contract.template_spec` (re-exported here), the
terminology checks in :mod:`node.contract.template_checks`; this module loads and looks up.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    ValidationError,
)

import node
from node.contract.template_checks import describe_validation_error, semantic_problems
from node.contract.template_spec import (
    CATEGORY_CID,
    DEFAULT_RADIOMICS_BIN_WIDTH,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    GEOMETRIC_UNITS,
    KEY_PATTERN,
    LATERALITY_CID,
    SCHEMA_FILE,
    SH_MAX,
    STATISTIC_DERIVATIONS,
    TYPE_CID,
    UCUM_UNITS,
    AlgorithmSpec,
    ClassificationSpec,
    CodeSpec,
    Colour,
    ComputeKind,
    DetectionSpec,
    FindingSpec,
    Key,
    LongText,
    MeasurementSpec,
    Operator,
    OutputSpec,
    RadiomicsClass,
    RadiomicsSettingsSpec,
    RuleSpec,
    ScoreUnit,
    SegmentSpec,
    ShortText,
    TemplateDocument,
    template_json_schema,
)
from node.errors import TemplateError

log = logging.getLogger(__name__)

#: Environment variable that overrides the default template directory.
TEMPLATE_DIR_ENV = "AINODE_TEMPLATE_DIR"

_Keyed = TypeVar("_Keyed", MeasurementSpec, ClassificationSpec, DetectionSpec)


def _by_key(specs: Iterable[_Keyed], key: str) -> _Keyed:
    """The spec with ``key``; ``KeyError`` when there is none."""
    for spec in specs:
        if spec.key == key:
            return spec
    raise KeyError(key)


@dataclass(frozen=True)
class ResultTemplate:
    """A validated template plus where it came from and the hash of its bytes.

    Attributes
    ----------
    document
        The parsed YAML.
    path
        The file it was read from.
    sha256
        SHA-256 (hex) of the file's bytes; recorded in every output.
    """

    document: TemplateDocument
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def algorithm(self) -> AlgorithmSpec:
        return self.document.algorithm

    @property
    def output(self) -> OutputSpec:
        return self.document.output

    @property
    def segments(self) -> tuple[SegmentSpec, ...]:
        return tuple(self.document.segments)

    @property
    def measurements(self) -> tuple[MeasurementSpec, ...]:
        return tuple(self.document.measurements)

    @property
    def procedure_reported(self) -> CodeSpec | None:
        return self.document.procedure_reported

    def segment_number(self, label_value: int) -> int:
        """DICOM segment number (1-based, template order) of a label value."""
        for number, segment in enumerate(self.document.segments, start=1):
            if segment.label_value == label_value:
                return number
        raise KeyError(label_value)

    def measurement(self, key: str) -> MeasurementSpec:
        return _by_key(self.document.measurements, key)

    @property
    def findings(self) -> tuple[FindingSpec, ...]:
        return tuple(self.document.findings)

    def segment(self, label_value: int) -> SegmentSpec:
        for spec in self.document.segments:
            if spec.label_value == label_value:
                return spec
        raise KeyError(label_value)

    @property
    def radiomics_classes(self) -> dict[int, tuple[str, ...]]:
        """``{label value: feature classes}`` of the segments that ask for radiomics."""
        return {s.label_value: tuple(s.radiomics) for s in self.document.segments if s.radiomics}

    @property
    def radiomics_settings(self) -> RadiomicsSettingsSpec:
        """The template's radiomics settings, defaults where it gives none."""
        return self.document.radiomics or RadiomicsSettingsSpec()

    @property
    def classifications(self) -> tuple[ClassificationSpec, ...]:
        return tuple(self.document.classifications)

    @property
    def detections(self) -> tuple[DetectionSpec, ...]:
        return tuple(self.document.detections)

    def classification(self, key: str) -> ClassificationSpec:
        return _by_key(self.document.classifications, key)

    def detection(self, key: str) -> DetectionSpec:
        return _by_key(self.document.detections, key)


#: The package that ships the templates (``dicom_sr_templates/`` at the repository root).
SHIPPED_TEMPLATES_PACKAGE = "dicom_sr_templates"


def default_template_dir() -> Path:
    """The directory of the templates shipped with ainode (in the wheel, or the checkout's).

    Found with :mod:`importlib.resources`, so a ``pip install`` finds the installed copy;
    a checkout whose editable install predates the package falls back to the folder
    beside ``node/``.
    """
    try:
        shipped = importlib.resources.files(SHIPPED_TEMPLATES_PACKAGE)
    except ModuleNotFoundError:
        return Path(node.__file__).resolve().parents[1] / SHIPPED_TEMPLATES_PACKAGE
    if not isinstance(shipped, Path):  # a zip import: never made by pip install
        raise TemplateError(f"the shipped templates are not files on disk: {shipped}")
    return shipped


def site_template_dir(directory: Path | str | None = None) -> Path | None:
    """The site's template directory: ``directory`` (``templates_dir``), else
    ``$AINODE_TEMPLATE_DIR``, else none."""
    if directory is not None:
        return Path(directory)
    override = os.environ.get(TEMPLATE_DIR_ENV)
    return Path(override) if override else None


def load_template_by_name(name: str, directory: Path | str | None = None) -> ResultTemplate:
    """Load the template ``<name>.yaml``: the site's copy first, else the shipped one.

    Parameters
    ----------
    name
        File stem of the template (``ct_lungs``).
    directory
        The site's template directory (the ``templates_dir`` setting); when ``None``,
        ``$AINODE_TEMPLATE_DIR`` if set. A template the site directory does not hold
        comes from :func:`default_template_dir`.

    Raises
    ------
    TemplateError
        When the name is not a plain stem, the site directory does not exist, neither
        place holds the template, or the file found is not a valid template (a broken
        site template is an error, never silently replaced by the shipped one).
    """
    if not KEY_PATTERN.match(name):
        raise TemplateError(f"template name {name!r} is not a plain file stem")
    file_name = f"{name}.yaml"
    site = site_template_dir(directory)
    if site is not None:
        if not site.is_dir():
            raise TemplateError(f"{site}: site template directory does not exist")
        if (site / file_name).exists():
            return load_template(site / file_name)
    shipped = default_template_dir()
    if (shipped / file_name).exists() or site is None:
        return load_template(shipped / file_name)
    raise TemplateError(
        f"no template {name!r}: neither {site / file_name} nor {shipped / file_name} exists"
    )


def warm_templates(names: Iterable[str], directory: Path | str | None = None) -> dict[str, str]:
    """Load each named template once (:func:`load_template_by_name`), so that the code
    tables its checks read (pydicom's SCT and DCM dictionaries, ~0.25 s) are loaded before
    the first job needs them; returns each template that failed with why (its jobs say
    so again)."""
    problems = {}
    for name in dict.fromkeys(names):
        try:
            load_template_by_name(name, directory)
        except TemplateError as exc:
            problems[name] = str(exc)
    return problems


def load_template(path: Path | str) -> ResultTemplate:
    """Read, parse and validate one template file.

    Raises
    ------
    TemplateError
        When the file cannot be read, is not YAML, or fails validation; the
        message is ``<file>: <path inside it>: <reason>``.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read template: {exc.strerror or exc}") from exc
    try:
        raw: Any = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TemplateError(f"{path}: (root): expected a mapping of keys")
    if raw.get("format_version") not in FORMAT_VERSIONS:
        expected = ", ".join(str(v) for v in FORMAT_VERSIONS[:-1]) + f" or {FORMAT_VERSIONS[-1]}"
        raise TemplateError(
            f"{path}: format_version: expected {expected}, found {raw.get('format_version')!r}"
        )
    try:
        document = TemplateDocument.model_validate(raw)
    except ValidationError as exc:
        reasons = "; ".join(describe_validation_error(error) for error in exc.errors())
        raise TemplateError(f"{path}: {reasons}") from exc
    problems = semantic_problems(document)
    if problems:
        reasons = "; ".join(f"{where}: {reason}" for where, reason in problems)
        raise TemplateError(f"{path}: {reasons}")
    if document.name != path.stem:
        log.warning("template name differs from file stem name=%s file=%s", document.name, path)
    sha256 = hashlib.sha256(content).hexdigest()
    log.debug("template loaded name=%s sha256=%s", document.name, sha256)
    return ResultTemplate(document=document, path=path, sha256=sha256)


def _main() -> None:  # pragma: no cover - a developer tool
    import json

    path = default_template_dir() / SCHEMA_FILE
    path.write_text(json.dumps(template_json_schema(), indent=2, sort_keys=True) + "\n")
    print(path)


#: The template format is re-exported: routines and builders import one module.
__all__ = [
    "CATEGORY_CID",
    "DEFAULT_RADIOMICS_BIN_WIDTH",
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "GEOMETRIC_UNITS",
    "KEY_PATTERN",
    "LATERALITY_CID",
    "SCHEMA_FILE",
    "SHIPPED_TEMPLATES_PACKAGE",
    "SH_MAX",
    "STATISTIC_DERIVATIONS",
    "TEMPLATE_DIR_ENV",
    "TYPE_CID",
    "UCUM_UNITS",
    "AlgorithmSpec",
    "ClassificationSpec",
    "CodeSpec",
    "Colour",
    "ComputeKind",
    "DetectionSpec",
    "FindingSpec",
    "Key",
    "LongText",
    "MeasurementSpec",
    "Operator",
    "OutputSpec",
    "RadiomicsClass",
    "RadiomicsSettingsSpec",
    "ResultTemplate",
    "RuleSpec",
    "ScoreUnit",
    "SegmentSpec",
    "ShortText",
    "TemplateDocument",
    "default_template_dir",
    "load_template",
    "load_template_by_name",
    "site_template_dir",
    "template_json_schema",
]


if __name__ == "__main__":  # pragma: no cover
    _main()
