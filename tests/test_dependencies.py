"""Ranges in pyproject.toml, exact pins in constraints.txt, and the Makefile passing them."""

from __future__ import annotations

import shutil
import subprocess
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
        ["make", "-n", "-B", "run", "test"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    installs = [line for line in printed.splitlines() if "pip install" in line]
    assert len(installs) >= 4, printed
    for line in installs:
        assert "-c constraints.txt" in line, line
    # torch in the same command as the node (and so monai): pip resolves them together.
    assert any(" torch -e ." in line for line in installs), installs
