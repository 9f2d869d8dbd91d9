"""Result templates: the shipped one loads, broken ones are rejected with file, path and reason."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.contract.template import (
    TEMPLATE_DIR_ENV,
    default_template_dir,
    load_template,
    load_template_by_name,
    warm_templates,
)
from node.errors import TemplateError

SHIPPED = default_template_dir() / "ct_lungs.yaml"


@pytest.fixture(scope="module")
def shipped_document() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text())


def write_variant(
    directory: Path, document: dict[str, Any], change: Callable[[dict[str, Any]], None]
) -> Path:
    variant = copy.deepcopy(document)
    change(variant)
    path = directory / "ct_lungs.yaml"
    path.write_text(yaml.safe_dump(variant, sort_keys=False))
    return path


def test_shipped_template_loads_with_its_codes() -> None:
    template = load_template_by_name("ct_lungs")
    assert template.path == SHIPPED
    assert template.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert template.algorithm.family.value == "123110"  # CID 7162 Artificial Intelligence
    right, left = template.segments
    assert (right.label_value, right.label) == (1, "Right lung")
    assert (left.label_value, left.label) == (2, "Left lung")
    assert right.category.value == left.category.value == "91723000"
    assert right.type.value == left.type.value == "39607008"
    assert right.type_modifier is not None and right.type_modifier.value == "24028007"
    assert left.type_modifier is not None and left.type_modifier.value == "7771000"
    volume = template.measurement("volume_cm3")
    assert (volume.concept.value, volume.concept.scheme, volume.unit) == ("118565006", "SCT", "cm3")
    mean = template.measurement("mean_hu")
    assert (mean.concept.value, mean.concept.scheme) == ("112031", "DCM")
    assert mean.derivation is not None and mean.derivation.value == "373098007"
    assert mean.unit == "[hnsf'U]"
    assert mean.unit_concept.CodeMeaning == "Hounsfield unit"
    assert template.segment_number(2) == 2
    # CIELab round trip of the display colour stays within one RGB step.
    back = right.display_colour.to_rgb()
    assert all(abs(a - b) <= 1 for a, b in zip(back, right.colour, strict=True))


def test_template_hash_follows_file_bytes(tmp_path: Path, shipped_document: dict[str, Any]) -> None:
    path = write_variant(tmp_path, shipped_document, lambda d: None)
    first = load_template(path).sha256
    path.write_text(path.read_text() + "# a comment changes the bytes\n")
    second = load_template(path).sha256
    assert first != second
    assert second == hashlib.sha256(path.read_bytes()).hexdigest()


def test_directory_parameter_and_environment_override(
    tmp_path: Path, shipped_document: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_variant(tmp_path, shipped_document, lambda d: d["segments"][0].update(label="R lung"))
    assert load_template_by_name("ct_lungs", tmp_path).segments[0].label == "R lung"
    monkeypatch.setenv(TEMPLATE_DIR_ENV, str(tmp_path))
    assert load_template_by_name("ct_lungs").segments[0].label == "R lung"
    with pytest.raises(TemplateError, match="no template 'no_such_template'"):
        load_template_by_name("no_such_template", tmp_path)
    with pytest.raises(TemplateError, match="not a plain file stem"):
        load_template_by_name("../ct_lungs", tmp_path)


def test_site_templates_are_looked_up_first_then_the_shipped_ones(
    tmp_path: Path, shipped_document: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``templates_dir`` with one site template must not hide the other shipped ones."""
    site = tmp_path / "site"
    site.mkdir()
    spleen = copy.deepcopy(shipped_document)
    spleen["name"] = "ct_spleen"
    (site / "ct_spleen.yaml").write_text(yaml.safe_dump(spleen, sort_keys=False))
    monkeypatch.delenv(TEMPLATE_DIR_ENV, raising=False)
    assert load_template_by_name("ct_spleen", site).path == site / "ct_spleen.yaml"
    for name in ("ct_lungs", "ct_organs", "op_fundus_classifier"):
        assert load_template_by_name(name, site).path == default_template_dir() / f"{name}.yaml"
    # The same through $AINODE_TEMPLATE_DIR.
    monkeypatch.setenv(TEMPLATE_DIR_ENV, str(site))
    assert load_template_by_name("ct_spleen").path == site / "ct_spleen.yaml"
    assert load_template_by_name("ct_lungs").path == SHIPPED
    # A broken site template is an error, never silently replaced by the shipped one.
    (site / "ct_lungs.yaml").write_text("format_version: 3\nname: [\n")
    with pytest.raises(TemplateError, match=r"site/ct_lungs\.yaml: not valid YAML"):
        load_template_by_name("ct_lungs", site)
    with pytest.raises(TemplateError, match="site template directory does not exist"):
        load_template_by_name("ct_lungs", tmp_path / "typo")


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


BROKEN = {
    "unknown key": (
        _set(["segments", 0, "colr"], [1, 2, 3]),
        "segments[0].colr",
        "unknown key",
    ),
    "unknown top-level key": (_set(["extra"], 1), "extra", "unknown key"),
    "duplicate label": (
        _set(["segments", 1, "label_value"], 1),
        "segments[1].label_value",
        "duplicate 1 (also segments[0])",
    ),
    "duplicate tracking id": (
        _set(["segments", 1, "tracking_id"], "right-lung"),
        "segments[1].tracking_id",
        "duplicate",
    ),
    "label value zero": (
        _set(["segments", 0, "label_value"], 0),
        "segments[0].label_value",
        "greater than or equal to 1",
    ),
    "bad unit": (
        _set(["measurements", 0, "unit"], "cc"),
        "measurements[0].unit",
        "not a known UCUM unit",
    ),
    "bad colour": (
        _set(["segments", 1, "colour"], [0, 300, 0]),
        "segments[1].colour[1]",
        "less than or equal to 255",
    ),
    "short colour": (
        _set(["segments", 0, "colour"], [0, 3]),
        "segments[0].colour",
        "at least 3 items",
    ),
    "missing code": (
        _delete(["segments", 1, "type"]),
        "segments[1].type",
        "required key is missing",
    ),
    "empty code value": (
        _set(["segments", 1, "type", "value"], ""),
        "segments[1].type.value",
        "must not be empty",
    ),
    "unquoted code value": (
        _set(["segments", 0, "type", "value"], 39607008),
        "segments[0].type.value",
        "valid string",
    ),
    "SNOMED value too long": (
        _set(["segments", 0, "type", "value"], "3960800839607008399"),
        "segments[0].type.value",
        "at most 16 characters",
    ),
    "code value beyond long code value": (
        _set(["measurements", 0, "concept", "value"], "9" * 65),
        "measurements[0].concept.value",
        "at most 64 allowed",
    ),
    "meaning does not match code": (
        _set(["segments", 0, "type", "meaning"], "Liver"),
        "segments[0].type.meaning",
        "SCT 39607008 means 'Lung'",
    ),
    "category outside CID 7150": (
        _set(
            ["segments", 0, "category"],
            {"value": "39607008", "scheme": "SCT", "meaning": "Lung"},
        ),
        "segments[0].category.value",
        "not in DICOM CID 7150",
    ),
    "modifier is not a laterality": (
        _set(
            ["segments", 1, "type_modifier"],
            {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
        ),
        "segments[1].type_modifier.value",
        "not in DICOM CID 244",
    ),
    "duplicate measurement key": (
        _set(["measurements", 1, "key"], "volume_cm3"),
        "measurements[1].key",
        "duplicate 'volume_cm3'",
    ),
    "bad device uid": (
        _set(["algorithm", "device_uid"], "2.25.01"),
        "algorithm.device_uid",
        "not a valid DICOM UID",
    ),
    "version not a string": (
        _set(["algorithm", "version"], 1.0),
        "algorithm.version",
        "valid string",
    ),
    "content label not CS": (
        _set(["output", "content_label"], "lungs"),
        "output.content_label",
        "A-Z",
    ),
    "no segments": (_set(["segments"], []), "segments", "at least 1 item"),
    "wrong format version": (
        _set(["format_version"], 4),
        "format_version",
        "expected 1, 2 or 3",
    ),
    "compute with the wrong unit": (
        _set(["measurements", 0, "compute"], "surface_area"),
        "measurements[0].unit",
        "compute 'surface_area' is reported in cm2, mm2",
    ),
    "statistic in a volume unit": (
        _set(["measurements", 1, "unit"], "mL"),
        "measurements[1].unit",
        "is a length, area or volume",
    ),
    "statistic with another derivation": (
        _set(["measurements", 2, "compute"], "max"),
        "measurements[2].derivation",
        "has derivation SCT 56851009 Maximum",
    ),
    "unknown compute": (
        _set(["measurements", 0, "compute"], "median"),
        "measurements[0].compute",
        "Input should be",
    ),
    "compute in format 1": (
        _set(["format_version"], 1),
        "measurements[0].compute",
        "needs format_version 2",
    ),
    "rule on an unknown measurement": (
        _set(["findings", 0, "rule", "measurement"], "weight"),
        "findings[0].rule.measurement",
        "'weight' is not a measurement key",
    ),
    "rule and values": (
        _set(
            ["findings", 0, "values"],
            {"small": {"value": "255507004", "scheme": "SCT", "meaning": "Small"}},
        ),
        "findings[0]",
        "exactly one of 'rule' and 'values'",
    ),
    "finding on an unknown segment": (
        _set(["findings", 0, "segments"], [1, 9]),
        "findings[0].segments[1]",
        "label value 9 is not a segment",
    ),
    "rule value with a wrong meaning": (
        _set(["findings", 0, "rule", "then", "meaning"], "Tiny"),
        "findings[0].rule.then.meaning",
        "SCT 255507004 means 'Small'",
    ),
    "bad operator": (
        _set(["findings", 0, "rule", "operator"], "=="),
        "findings[0].rule.operator",
        "Input should be",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_template_is_rejected_with_file_path_and_reason(
    case: str, tmp_path: Path, shipped_document: dict[str, Any]
) -> None:
    change, where, reason = BROKEN[case]
    path = write_variant(tmp_path, shipped_document, change)
    with pytest.raises(TemplateError) as raised:
        load_template(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    assert f"{where}: " in message, message
    assert reason in message, message


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("segments: [unclosed\n")
    with pytest.raises(TemplateError, match="not valid YAML"):
        load_template(broken)
    broken.write_text("- just\n- a list\n")
    with pytest.raises(TemplateError, match=r"\(root\): expected a mapping"):
        load_template(broken)


def test_shipped_schema_is_current_and_every_template_follows_it() -> None:
    import json

    import jsonschema

    from node.contract.template import SCHEMA_FILE, template_json_schema

    schema_path = default_template_dir() / SCHEMA_FILE
    shipped = json.loads(schema_path.read_text())
    assert shipped == template_json_schema(), (
        "dicom_sr_templates/template.schema.json is stale: run python -m node.contract.template"
    )
    jsonschema.Draft202012Validator.check_schema(shipped)
    validator = jsonschema.Draft202012Validator(shipped)
    templates = [
        *default_template_dir().glob("*.yaml"),
        *(Path(__file__).parent / "data" / "templates").glob("*.yaml"),
    ]
    assert len(templates) >= 2
    for path in templates:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], f"{path.name}: {errors}"
        load_template(path)  # and the loader's own checks pass
    broken = yaml.safe_load(SHIPPED.read_text())
    broken["segments"][0]["colour"] = [0, 300, 0]
    broken["measurements"][0]["compute"] = "median"
    assert len(list(validator.iter_errors(broken))) == 2


def test_every_builtin_plugin_has_a_template_that_loads() -> None:
    from node.orchestration.registry import PluginRegistry

    registry = PluginRegistry.discover()
    assert registry.info(), "no built-in plugin found"
    for info in registry.info():
        template = load_template_by_name(info.template)
        assert template.name == info.template


def test_computed_measurements_and_findings_of_the_shipped_template() -> None:
    template = load_template_by_name("ct_lungs")
    computed = {m.key: m.compute for m in template.measurements}
    assert computed == {
        "volume_cm3": "volume",
        "mean_hu": "mean",
        "std_hu": "std",
        "axial_diameter_mm": "largest_axial_diameter",
        "surface_area_cm2": "surface_area",
    }
    assert template.measurement("std_hu").derivation_concept.value == "386136009"
    (size,) = template.findings
    assert size.rule is not None
    assert size.rule.evaluate(999.0).meaning == "Small"
    assert size.rule.evaluate(1000.0).meaning == "Normal"


def test_warming_templates_loads_the_code_tables_and_names_what_fails(tmp_path: Path) -> None:
    """At start-up the node loads its routines' templates once, so that the first job
    does not wait for the tables the template checks read (pydicom's SCT and DCM
    dictionaries); a template that does not load is named, not raised."""
    from node.contract import template_checks

    template_checks._known_meanings.cache_clear()
    (tmp_path / "broken.yaml").write_text("name: [", encoding="utf-8")
    problems = warm_templates(["ct_lungs", "broken", "ct_lungs", "missing"], tmp_path)
    assert sorted(problems) == ["broken", "missing"]
    assert "broken.yaml" in problems["broken"] and "no template 'missing'" in problems["missing"]
    assert template_checks._known_meanings.cache_info().currsize == 1
