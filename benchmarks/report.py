"""Write benchmark results: ``<key>.json`` and ``<key>.png`` per section and a summary.

Each section's JSON holds its result and the machine it ran on (CPU model, cores, memory,
load average at its start and end, GPU, versions of Python/torch/Orthanc/dcmtk, git commit,
date). The PNG comes from the section module's ``plot(result, path)``; a module without one
(or a plot that raises) is skipped with a printed note, never failing the run. ``README.md``
in the results directory is regenerated from every ``<key>.json`` there, so running one
section keeps the others' latest numbers.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import subprocess
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: The checkout (for the git commit).
ROOT = Path(__file__).resolve().parents[1]
#: Where ``make bench`` writes, and what README.md links.
DEFAULT_RESULTS_DIR = ROOT / "benchmarks" / "results"

Plot = Callable[[dict[str, Any], Path], None]


def _first_line(command: list[str]) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if out.returncode == 0 and text else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_kib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpu() -> str | None:
    names = _first_line(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if names:
        return names
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def _torch() -> str | None:
    try:
        import torch

        return str(torch.__version__)
    except ImportError:
        return None


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (what else the machine was doing)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the numbers were measured on, at this moment."""
    commit = _first_line(["git", "rev-parse", "HEAD"])
    dirty = _first_line(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_kib": _memory_kib(),
        "load_average": load_average(),
        "gpu": _gpu(),
        "python": platform.python_version(),
        "torch": _torch(),
        "orthanc": _first_line(["Orthanc", "--version"]),
        "dcmtk": _first_line(["storescu", "--version"]),
        "git_commit": commit,
        "git_dirty": bool(dirty),
    }


def find_plot(module: str) -> Plot | None:
    """The ``plot`` function of a benchmark module, or None when it has none."""
    try:
        found = getattr(importlib.import_module(module), "plot", None)
    except ImportError:
        return None
    return found if callable(found) else None


def write_section(
    results_dir: Path,
    key: str,
    result: dict[str, Any],
    started: dict[str, Any],
    plot: Plot | None,
) -> list[str]:
    """Write ``<key>.json`` (result + machine) and ``<key>.png``; return printed notes.

    ``started`` is :func:`machine` taken before the section ran; the load average at the
    end is added here. A failed section (``"error"`` in its result) gets no plot.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    document = {
        "section": key,
        "machine": {**started, "load_average_end": load_average()},
        "result": result,
    }
    json_path = results_dir / f"{key}.json"
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    notes.append(f"wrote {json_path}")
    png = results_dir / f"{key}.png"
    if "error" in result:
        notes.append(f"no plot for {key}: the section failed")
    elif plot is None:
        notes.append(f"no plot for {key}: its module has no plot(result, path)")
    else:
        try:
            import matplotlib

            matplotlib.use("Agg")
            plot(result, png)
            notes.append(f"wrote {png}")
        except Exception as exc:  # a broken plot must not lose the numbers
            traceback.print_exc()
            notes.append(f"no plot for {key}: {type(exc).__name__}: {exc}")
    return notes


def write_summary(
    results_dir: Path, tables: Iterable[tuple[str, Callable[[dict[str, Any]], list[str]]]]
) -> Path:
    """Regenerate ``README.md`` from every ``<key>.json`` in ``results_dir``.

    ``tables`` gives, per section key in run order, the function that prints its result.
    """
    lines = [
        "# Latest benchmark results",
        "",
        "Written by `make bench` / `python -m benchmarks` (see `../README.md` for what each",
        "section measures). Each section's JSON holds its full result and the machine.",
        "",
        "| section | date (UTC) | commit | CPU | load at start / end | GPU |",
        "|---|---|---|---|---|---|",
    ]
    bodies: list[str] = []
    for key, table in tables:
        path = results_dir / f"{key}.json"
        if not path.exists():
            continue
        document = json.loads(path.read_text(encoding="utf-8"))
        m = document.get("machine", {})
        commit = (m.get("git_commit") or "?")[:10] + (" (dirty)" if m.get("git_dirty") else "")
        load = f"{(m.get('load_average') or ['?'])[0]} / {(m.get('load_average_end') or ['?'])[0]}"
        cpu = f"{m.get('cpus')} x {m.get('cpu_model')}"
        lines.append(
            f"| [{key}]({key}.json) | {m.get('date', '?')} | {commit} | {cpu} | {load}"
            f" | {m.get('gpu') or 'none'} |"
        )
        result = document.get("result", {})
        bodies += ["", f"## {key}", ""]
        if "error" in result:
            bodies.append(f"Failed: `{result['error'].splitlines()[0]}`")
        else:
            try:
                printed = table(result)
            except Exception as exc:  # an old JSON a newer table cannot read
                printed = [f"(cannot print: {type(exc).__name__}: {exc})"]
            bodies += ["```", *printed, "```"]
        if (results_dir / f"{key}.png").exists():
            bodies += ["", f"![{key}]({key}.png)"]
    summary = results_dir / "README.md"
    summary.write_text("\n".join([*lines, *bodies]) + "\n", encoding="utf-8")
    return summary
