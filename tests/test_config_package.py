"""The configuration package: sections in their own modules, the embedded defaults in a
packaged YAML file, and no import of the layers above it."""

import subprocess
import sys
from importlib import resources
from pathlib import Path

import yaml

from node.config import (
    BUILT_IN_CHEST_RULE,
    BUILT_IN_FUNDUS_DEMO_RULE,
    BUILT_IN_MAMMO_DEMO_RULE,
    BUILT_IN_ORGANS_DEMO_RULE,
    DEFAULT_CONFIG,
    Settings,
    config_problems,
    load_settings,
)
from node.config.defaults import built_in_rule

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_defaults_come_from_the_packaged_yaml():
    shipped = yaml.safe_load(
        resources.files("node.config").joinpath("defaults.yaml").read_text(encoding="utf-8")
    )
    assert shipped == DEFAULT_CONFIG
    by_name = {rule["name"]: rule for rule in shipped["rules"]}
    assert by_name["chest-ct"] == BUILT_IN_CHEST_RULE
    assert by_name["ct-organs-demo"] == BUILT_IN_ORGANS_DEMO_RULE
    assert by_name["op-fundus-demo"] == BUILT_IN_FUNDUS_DEMO_RULE
    assert by_name["mg-mass-demo"] == BUILT_IN_MAMMO_DEMO_RULE
    # Demo rules route to demonstration models, below the clinical routine and send nowhere.
    for rule in (BUILT_IN_ORGANS_DEMO_RULE, BUILT_IN_FUNDUS_DEMO_RULE, BUILT_IN_MAMMO_DEMO_RULE):
        assert rule["priority"] == 6 and rule["send_to"] == []
    assert "priority" not in BUILT_IN_CHEST_RULE


def test_make_run_defaults_load_the_four_built_in_rules():
    settings = load_settings(None, environ={})
    assert [(r.name, r.plugin, r.priority) for r in settings.rules] == [
        ("chest-ct", "ct_lungs", 5),
        ("ct-organs-demo", "ct_organs", 6),
        ("op-fundus-demo", "op_fundus_classifier", 6),
        ("mg-mass-demo", "mg_mass_detector", 6),
    ]
    assert settings.destinations == {}
    assert settings.completion.series_quiet_seconds == 10


def test_built_in_rules_are_copies():
    """A caller that edits a built-in rule changes neither the defaults nor the next copy."""
    rule = built_in_rule("chest-ct")
    rule["match"]["Modality"] = "MR"
    assert DEFAULT_CONFIG["rules"][0]["match"]["Modality"] == "CT"
    assert built_in_rule("chest-ct")["match"]["Modality"] == "CT"


def test_config_problems_takes_the_plugin_names_from_its_caller(tmp_path):
    path = tmp_path / "ainode.yaml"
    path.write_text(
        "rules:\n  - {name: r, match: {Modality: CT}, plugin: site_routine, send_to: []}\n"
    )
    settings, problems = config_problems(path, {"site_routine"}, environ={})
    assert isinstance(settings, Settings) and problems == []
    _, problems = config_problems(path, {"ct_lungs"}, environ={})
    assert problems == [("rules[0].plugin", "unknown plugin 'site_routine' (installed: ct_lungs)")]


def test_config_problems_reports_what_the_callers_model_check_found(tmp_path):
    path = tmp_path / "ainode.yaml"
    path.write_text(
        "models:\n  mine:\n    type: monai_bundle\n    path: /nowhere\n    template: ct_lungs\n"
    )
    checked: list[Settings] = []

    def model_problems(settings: Settings) -> dict[str, str]:
        checked.append(settings)
        return {"mine": "no such bundle", "other": "not configured, not reported"}

    settings, problems = config_problems(path, set(), model_problems=model_problems, environ={})
    assert checked == [settings]
    assert problems == [("models.mine", "no such bundle")]


def test_config_imports_no_layer_above_it(tmp_path):
    """Loading and checking a configuration imports neither the plugin registry nor the
    engine, orchestration, state, network, API or admin layers (the caller passes the
    plugin names in); only the plain contract types its result profiles name."""
    code = (
        "import sys, pathlib\n"
        "from node.config import config_problems, load_settings\n"
        "load_settings(None, environ={})\n"
        f"path = pathlib.Path({str(tmp_path / 'a.yaml')!r})\n"
        "path.write_text('rules: []\\n')\n"
        "config_problems(path, set(), environ={})\n"
        "above = ('node.export', 'node.api', 'node.admin', 'node.dicom', 'node.dicomweb',"
        " 'node.pull', 'node.app', 'node.cli', 'node.state', 'node.engine', 'node.results',"
        " 'node.orchestration', 'node.evaluation')\n"
        "print(sorted(m for m in sys.modules if m.startswith(above)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
