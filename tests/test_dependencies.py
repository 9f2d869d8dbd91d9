"""Ranges in pyproject.toml, exact pins in constraints.txt, and the Makefile passing them."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def requirements() -> dict[str, Requirement]:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    parsed = (Requirement(line) for line in pyproject["project"]["dependencies"])
    return {requirement.name: requirement for requirement in parsed}


def constraints() -> dict[str, Requirement]:
    lines = (PROJECT_ROOT / "constraints.txt").read_text().splitlines()
    parsed = (Requirement(line) for line in lines if line.strip() and not line.startswith("#"))
    return {requirement.name: requirement for requirement in parsed}


def test_torch_is_a_range_in_pyproject_and_pinned_in_constraints() -> None:
    (pin,) = constraints()["torch"].specifier
    assert pin.operator == "==", "constraints.txt pins torch exactly"
    wanted = requirements()["torch"].specifier
    assert all(spec.operator != "==" for spec in wanted), "pyproject.toml gives torch a range"
    assert Version(pin.version) in wanted, "the pinned torch lies in pyproject's range"
    # This environment was installed with the pin (the Makefile passes -c constraints.txt).
    assert Version(version("torch")).base_version == pin.version


def test_highdicom_is_capped_below_its_next_minor_release() -> None:
    wanted = requirements()["highdicom"].specifier
    installed = Version(version("highdicom"))
    assert installed in wanted
    assert Version(f"{installed.major}.{installed.minor + 1}") not in wanted


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_every_pip_install_of_make_run_and_make_test_takes_the_constraints() -> None:
    # -B: every recipe, as on a fresh checkout; -n: print only.
    printed = subprocess.run(
        ["make", "-n", "-B", "run", "test", "demo"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    installs = [line for line in printed.splitlines() if "pip install" in line]
    assert len(installs) >= 4, printed
    for line in installs:
        assert "-c constraints.txt" in line, line
    # torch in the same command as the node (and so monai): pip resolves them together.
    assert any(" torch -e ." in line for line in installs), installs
    # make demo / make viewer add the tools' extra (pyorthanc) to the node.
    assert any("-e '.[tools]'" in line for line in installs), installs


def _imports(path: Path, *, skip_type_checking: bool = False) -> set[str]:
    """Top-level packages a module imports (``if TYPE_CHECKING:`` blocks left out on request)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    if skip_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_pyorthanc_is_a_tool_dependency_the_service_never_imports() -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert "pyorthanc" not in requirements()
    extras = pyproject["project"]["optional-dependencies"]
    assert any(Requirement(r).name == "pyorthanc" for r in extras["tools"])
    assert "ainode[tools]" in extras["dev"]
    service = [
        path for root in ("node", "plugins") for path in sorted((PROJECT_ROOT / root).rglob("*.py"))
    ]
    assert len(service) > 50
    importing = [str(p) for p in service if "pyorthanc" in _imports(p)]
    assert importing == [], "the service calls no Orthanc REST API"
    # Orthanc's own Python runs the plugin: the standard library and its orthanc module only.
    plugin = _imports(PROJECT_ROOT / "orthanc" / "ainode_plugin.py", skip_type_checking=True)
    assert "pyorthanc" not in plugin
    assert plugin <= {*sys.stdlib_module_names, "orthanc", "__future__"}, plugin
