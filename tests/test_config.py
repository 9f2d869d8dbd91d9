from pathlib import Path

import pytest

from node.config import DEFAULT_CONFIG, check_plugins_known, load_settings, settings_from_mapping
from node.errors import ConfigError

ISSUE_EXAMPLE = """
node: {ae_title: AINODE, dicom_port: 11112, http_port: 8080, data_dir: ./var}
completion: {series_quiet_seconds: 10}
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
rules:
  - name: chest-ct
    match: {Modality: CT, SeriesDescription: {regex: "(?i)chest|thorax|lung"}}
    plugin: ct_lungs
    send_to: [pacs]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ainode.yaml"
    path.write_text(text)
    return path


def test_documented_example_loads(tmp_path):
    settings = load_settings(write(tmp_path, ISSUE_EXAMPLE), environ={})
    assert settings.node.ae_title == "AINODE"
    assert settings.destinations["pacs"].port == 4242
    assert settings.rules[0].send_to == ["pacs"]
    assert settings.completion.series_quiet_seconds == 10


def test_embedded_defaults_are_valid():
    settings = load_settings(None, environ={})
    assert settings.node.dicom_port == 11112
    assert settings.node.http_port == 8080
    assert settings.rules[0].plugin == DEFAULT_CONFIG["rules"][0]["plugin"]


def test_environment_overrides(tmp_path):
    path = write(tmp_path, ISSUE_EXAMPLE)
    env = {"AINODE_DICOM_PORT": "5555", "AINODE_HTTP_PORT": "5556", "AINODE_DATA_DIR": "/tmp/x"}
    settings = load_settings(path, environ=env)
    assert settings.node.dicom_port == 5555
    assert settings.node.http_port == 5556
    assert str(settings.node.data_dir) == "/tmp/x"


def test_ainode_config_variable_names_the_file(tmp_path):
    path = write(tmp_path, ISSUE_EXAMPLE.replace("AINODE,", "OTHERAE,"))
    settings = load_settings(None, environ={"AINODE_CONFIG": str(path)})
    assert settings.node.ae_title == "OTHERAE"


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            ("completion: {series_quiet_seconds: 10}", "completion: {series_quiet: 10}"),
            "completion.series_quiet: unknown key",
        ),
        (("dicom_port: 11112", "dicom_port: eleven"), "node.dicom_port"),
        (
            ("send_to: [pacs]", "send_to: [archive]"),
            "rules[0].send_to: unknown destination 'archive'",
        ),
        (
            ('{regex: "(?i)chest|thorax|lung"}', '{regex: "(unclosed"}'),
            "match.SeriesDescription.regex: invalid regular expression",
        ),
        (("Modality: CT", "Modalty: CT"), "'Modalty' is not a DICOM keyword"),
        (("port: 4242", "port: 70000"), "destinations.pacs.port"),
        (
            ("ae_title: ORTHANC", "ae_title: THIS_AE_TITLE_IS_TOO_LONG"),
            "destinations.pacs.ae_title",
        ),
    ],
)
def test_bad_config_names_file_key_and_reason(tmp_path, mutation, expected):
    old, new = mutation
    assert old in ISSUE_EXAMPLE
    path = write(tmp_path, ISSUE_EXAMPLE.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert str(path) in message
    assert expected in message


def test_unknown_plugin_is_rejected_with_its_rule_path(tmp_path):
    settings = load_settings(write(tmp_path, ISSUE_EXAMPLE), environ={})
    with pytest.raises(ConfigError, match=r"rules\[0\]\.plugin: unknown plugin 'ct_lungs'"):
        check_plugins_known(settings, {"other"}, source="x.yaml")


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "node: [unclosed"), environ={})


def test_duplicate_rule_names_rejected():
    raw = {"rules": [{"name": "a", "plugin": "p"}, {"name": "a", "plugin": "p"}]}
    with pytest.raises(ConfigError, match="repeated: a"):
        settings_from_mapping(raw, environ={})
