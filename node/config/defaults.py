"""The embedded defaults (``defaults.yaml``, shipped as package data) and their rules by name."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml


def _load() -> dict[str, Any]:
    text = resources.files("node.config").joinpath("defaults.yaml").read_text(encoding="utf-8")
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict), "defaults.yaml must be a mapping of sections"
    return loaded


#: The configuration ``make run`` uses when no file is given.
DEFAULT_CONFIG: dict[str, Any] = _load()


def built_in_rule(name: str) -> dict[str, Any]:
    """A copy of the embedded default rule called ``name``."""
    for rule in DEFAULT_CONFIG["rules"]:
        if rule["name"] == name:
            return copy.deepcopy(rule)
    raise KeyError(f"no built-in rule named {name!r}")


#: The built-in routing: chest CT series go to the lung routine.
BUILT_IN_CHEST_RULE = built_in_rule("chest-ct")
#: Abdomen/body CT series go to the ``ct_organs`` demonstration model.
BUILT_IN_ORGANS_DEMO_RULE = built_in_rule("ct-organs-demo")
#: Colour fundus photographs go to the ``op_fundus_classifier`` demonstration model.
BUILT_IN_FUNDUS_DEMO_RULE = built_in_rule("op-fundus-demo")
#: For Presentation mammograms go to the ``mg_mass_detector`` demonstration model.
BUILT_IN_MAMMO_DEMO_RULE = built_in_rule("mg-mass-demo")
