"""``make bench``'s writer: per-section JSON with the machine, a PNG from the module's plot,
a summary README; and ``python -m benchmarks`` end to end on a cheap section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from benchmarks.run import SECTIONS
from tools.node_process import PROJECT_ROOT

MACHINE_FIELDS = {
    "date",
    "cpu_model",
    "cpus",
    "memory_kib",
    "load_average",
    "load_average_end",
    "gpu",
    "python",
    "torch",
    "orthanc",
    "dcmtk",
    "git_commit",
}
BENCH = [sys.executable, "-m", "benchmarks"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bars(result: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar(["a", "b"], [result["a"], result["b"]])
    fig.savefig(path)
    plt.close(fig)


def test_a_section_gets_json_with_the_machine_and_a_png(tmp_path: Path) -> None:
    notes = report.write_section(tmp_path, "demo", {"a": 1, "b": 2}, report.machine(), _bars)
    document = json.loads((tmp_path / "demo.json").read_text())
    assert document["section"] == "demo" and document["result"] == {"a": 1, "b": 2}
    machine = document["machine"]
    assert machine.keys() >= MACHINE_FIELDS
    assert machine["cpus"] == os.cpu_count() and machine["memory_kib"] > 0
    assert len(machine["load_average"]) == 3 and len(machine["load_average_end"]) == 3
    assert len(machine["git_commit"]) == 40
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    png = (tmp_path / "demo.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    assert f"wrote {tmp_path / 'demo.png'}" in notes


def test_a_missing_or_broken_plot_is_a_note_and_the_numbers_are_kept(tmp_path: Path) -> None:
    def broken(result: dict[str, Any], path: Path) -> None:
        raise KeyError("median")

    missing = report.write_section(tmp_path, "none", {"a": 1}, report.machine(), None)
    failing = report.write_section(tmp_path, "bad", {"a": 1}, report.machine(), broken)
    failed_run = report.write_section(tmp_path, "err", {"error": "X: y"}, report.machine(), _bars)
    assert "no plot for none: its module has no plot(result, path)" in missing
    assert any(note.startswith("no plot for bad: KeyError") for note in failing)
    assert "no plot for err: the section failed" in failed_run
    for key in ("none", "bad", "err"):
        assert json.loads((tmp_path / f"{key}.json").read_text())["result"]
        assert not (tmp_path / f"{key}.png").exists()


def test_find_plot_takes_the_module_function_or_none() -> None:
    assert report.find_plot("benchmarks.urgent") is not None
    assert report.find_plot("benchmarks.pipeline") is None  # a module without plot()
    assert report.find_plot("benchmarks.no_such_module") is None


def test_every_section_names_an_existing_module(tmp_path: Path) -> None:
    # A section's module is where its plot is looked up; a typo would silently skip it.
    for section in SECTIONS:
        module = section.plot_module
        assert (PROJECT_ROOT / Path(*module.split("."))).with_suffix(".py").exists(), module


def test_the_summary_lists_every_written_section_with_its_table_and_plot(tmp_path: Path) -> None:
    report.write_section(tmp_path, "demo", {"a": 1, "b": 2}, report.machine(), _bars)
    report.write_section(tmp_path, "gone", {"error": "Timeout: no node"}, report.machine(), None)
    summary = report.write_summary(
        tmp_path,
        [
            ("demo", lambda r: [f"a={r['a']} b={r['b']}"]),
            ("gone", lambda r: []),
            ("never_ran", lambda r: ["not here"]),
        ],
    ).read_text()
    assert "| [demo](demo.json) |" in summary and "a=1 b=2" in summary
    assert "![demo](demo.png)" in summary
    assert "Failed: `Timeout: no node`" in summary and "![gone]" not in summary
    assert "never_ran" not in summary


@pytest.mark.slow
def test_python_m_benchmarks_writes_results_of_one_section(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = subprocess.run(
        [*BENCH, "--only", "startup", "--startup-runs", "1", "--results-dir", str(results)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads((results / "startup.json").read_text())
    assert document["machine"].keys() >= MACHINE_FIELDS
    assert len(document["result"]["runs"]) == 1
    assert document["result"]["median_readyz_s"] > 0
    assert (results / "startup.png").read_bytes().startswith(PNG_MAGIC)
    summary = (results / "README.md").read_text()
    assert "![startup](startup.png)" in summary and "Start-up: 1 starts" in summary
    assert sorted(p.name for p in results.iterdir()) == ["README.md", "startup.json", "startup.png"]
