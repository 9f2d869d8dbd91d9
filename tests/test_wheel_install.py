"""The node installed from its wheel (not the checkout) runs a chest CT end to end.

The wheel is built from a copy of the package sources and installed into a fresh venv.
The dependencies come from the test's own environment through a ``.pth`` line naming its
site-packages: a directory added that way has its own ``.pth`` files ignored, so the
checkout's editable install there is never loaded (checked through ``node.__file__``).
The node and ``ainode evaluate`` run from a directory outside the checkout with no
``AINODE_*`` variables, so only what the wheel ships is there to be found.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
import pytest

from node.config import BUILT_IN_CHEST_RULE
from tests.support.dcmtk import storescu
from tests.support.pacs import node_config, one_result_each, orthanc_for_node
from tools.node_process import PROJECT_ROOT, NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = pytest.mark.slow

#: What ``pip wheel`` needs from the checkout (pyproject names README.md as the readme).
SOURCES = ("pyproject.toml", "README.md", "node", "plugins", "dicom_sr_templates")


def build_wheel(target: Path) -> Path:
    """Build ainode's wheel from a copy of the sources (no build/ left in the checkout)."""
    source = target / "src"
    source.mkdir(parents=True)
    for name in SOURCES:
        path = PROJECT_ROOT / name
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    dist = target / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(dist), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("ainode-*.whl")
    return wheel


def venv_with_wheel(wheel: Path, target: Path) -> Path:
    """A venv holding only the wheel, with this environment's site-packages for the
    dependencies; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    python = target / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def clean_env() -> dict[str, str]:
    """This environment without AINODE_* and with an empty PYTHONPATH (which Python
    ignores): nothing may point at the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
    return {**env, "PYTHONPATH": ""}


def test_wheel_install_runs_a_chest_ct_and_ainode_evaluate(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "build")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dicom_sr_templates/ct_lungs.yaml" in names
    assert "plugins/ct_organs/weights/ct_organs_unet.pt" in names
    assert "node/api/templates/base.html" in names
    # Only the service ships: no development tools, synthetic data or training code.
    assert not [n for n in names if n.startswith("tools/") or "/synthetic/" in n], names
    assert not [n for n in names if n.endswith(("/train.py", "training.py"))], names
    assert "node/config/defaults.yaml" in names  # make run's embedded defaults and demo rules
    venv = tmp_path / "venv"
    python = venv_with_wheel(wheel, venv)
    run_dir = tmp_path / "run"  # outside the checkout: -m node must not find its node/
    run_dir.mkdir()
    env = clean_env()
    imports = "import node, dicom_sr_templates as t; print(node.__file__, t.__file__)"
    where = subprocess.run(
        [str(python), "-c", imports],
        cwd=run_dir, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(path).is_relative_to(venv) for path in where), where
    # The embedded defaults (no file) are read from the wheel's package data.
    defaults = (
        "from node.config import load_settings\n"
        "print(*(rule.name for rule in load_settings(environ={}).rules))"
    )
    rules = subprocess.run(
        [str(python), "-c", defaults],
        cwd=run_dir, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert rules == ["chest-ct", "ct-organs-demo", "op-fundus-demo", "mg-mass-demo"]

    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = node_config(node_port, pacs, [BUILT_IN_CHEST_RULE])
        with NodeProcess(
            config,
            workdir=tmp_path / "node",
            python=str(python),
            cwd=run_dir,
            env={"PYTHONPATH": ""},
        ) as node:
            # Every shipped routine loaded (weights from the wheel), console pages served.
            health = node.healthz()
            assert health["plugin_errors"] == {}, health
            assert {"ct_lungs", "ct_organs", "op_fundus_classifier"} <= set(health["plugins"])
            for page in ("/setup", "/static/console.css", "/static/console.js"):
                assert httpx.get(node.url + page, timeout=10).status_code == 200, page
            datasets, _ = make_chest_ct(
                n_slices=40, rows=128, columns=128, pixel_spacing_mm=3.0, slice_thickness_mm=5.0
            )
            files = write_series(datasets, tmp_path / "series")
            storescu(node.dicom_port, files, "SCANNER", called_ae=node.ae_title)
            objects = one_result_each(pacs, datasets[0].StudyInstanceUID, ["SEG", "SR"])
            seg = objects["SEG"]
            assert (
                seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
            )
            assert "TemplateError" not in node.log_text()

    # ainode evaluate (the console script the wheel installs) on a one-case dataset, made by
    # the checkout's development tools (they are not in the wheel).
    dataset = tmp_path / "dataset"
    subprocess.run(
        [sys.executable, "-m", "tools.evaluation_example", str(dataset), "--cases", "1"],
        cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    report = tmp_path / "report"
    result = subprocess.run(
        [str(venv / "bin" / "ainode"), "evaluate", "--plugin", "ct_lungs", "--dataset",
         str(dataset), "--device", "cpu", "--output", str(report)],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Right lung: Dice mean" in result.stdout
    assert (report / "metrics.json").is_file()
