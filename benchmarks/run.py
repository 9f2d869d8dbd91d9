"""Run the benchmarks, print a table and write JSON + PNG per section.

Usage::

    python -m benchmarks                       # every section -> benchmarks/results/
    python -m benchmarks --only startup --results-dir /tmp/bench
    python -m benchmarks --only ingest --count 303 --repeat 3
    python -m benchmarks --only e2e --e2e-runs 2 --json var/bench.json
    python -m benchmarks --only inference --inference-runs 2
    python -m benchmarks --only startup --startup-runs 10

Benchmarks measure; they assert nothing about speed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import eta_accuracy, report, state_backends


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="ainode ingest and end-to-end benchmarks"
    )
    parser.add_argument(
        "--only", choices=[s.name for s in SECTIONS], action="append", help="run only this section"
    )
    parser.add_argument("--count", type=int, default=303, help="instances per ingest run")
    parser.add_argument("--repeat", type=int, default=3, help="ingest runs per receiver")
    parser.add_argument("--e2e-runs", type=int, default=1, help="studies sent end to end")
    parser.add_argument(
        "--e2e-associations",
        type=int,
        default=2,
        help="associations the node sends a job's results over at once (e2e; the node's"
        " default, 2)",
    )
    parser.add_argument(
        "--slices",
        type=int,
        nargs="+",
        default=[300],
        help="phantom slices (e2e); several sizes run in turn, e.g. --slices 300 1000",
    )
    parser.add_argument("--rows", type=int, default=512, help="phantom rows = columns (e2e)")
    parser.add_argument(
        "--quiet-seconds", type=float, default=2.0, help="node's series completion quiet period"
    )
    parser.add_argument("--completion-runs", type=int, default=2, help="series per completion mode")
    parser.add_argument(
        "--completion-quiet-seconds",
        type=float,
        default=10.0,
        help="quiet period in the completion benchmark (the node's default)",
    )
    parser.add_argument("--inference-runs", type=int, default=1, help="node/reference pairs")
    parser.add_argument("--inference-slices", type=int, default=300, help="CT slices (inference)")
    parser.add_argument("--inference-device", default="cpu", help="torch device (inference)")
    parser.add_argument("--startup-runs", type=int, default=10, help="node starts (startup)")
    parser.add_argument(
        "--startup-cwd", type=Path, help="checkout whose node is started (startup; default: this)"
    )
    parser.add_argument("--soak-series", type=int, default=200, help="series sent (soak)")
    parser.add_argument(
        "--soak-ct-every", type=int, default=4, help="every Nth soak series is a CT, the rest 2D"
    )
    parser.add_argument("--soak-slices", type=int, default=24, help="slices per soak CT series")
    parser.add_argument("--urgent-backlog", type=int, default=20, help="routine series queued")
    parser.add_argument("--urgent-slices", type=int, default=40, help="slices per urgent-bench CT")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=report.DEFAULT_RESULTS_DIR,
        help="where <section>.json, <section>.png and README.md are written",
    )
    parser.add_argument("--json", type=Path, help="also write the whole run as one JSON file")
    parser.add_argument("--eta-learn", default="20,40,60,30,50,24", help="slices learnt from (eta)")
    parser.add_argument("--eta-burst", default="24,48,20,40,32,56,28,36", help="queued (eta)")
    parser.add_argument("--eta-rows", type=int, default=128, help="rows = columns (eta)")
    parser.add_argument(
        "--encoding-labels", default="1,10,100", help="label counts (encoding, comma-separated)"
    )
    parser.add_argument("--encoding-slices", type=int, default=300, help="CT slices (encoding)")
    parser.add_argument("--ray-series", type=int, default=12, help="series per executor (ray)")
    parser.add_argument("--ray-slices", type=int, default=24, help="slices per series (ray)")
    parser.add_argument("--ray-workers", default="1,2,4", help="Ray worker counts (ray)")
    parser.add_argument(
        "--idle-associations", type=int, default=32, help="associations held open (idle)"
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="CPU window (idle)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Section:
    """One benchmark: its ``--only`` name, its key in the report, how to run and print it.

    ``run`` gets the parsed arguments and a fresh work directory and returns a JSON-able
    dict; ``table`` turns that dict into printed lines. The PNG is drawn by ``plot(result,
    path)`` of ``module`` (default ``benchmarks.<key>``); results go to ``<key>.json/.png``.
    """

    name: str
    key: str
    run: Callable[[argparse.Namespace, Path], dict[str, Any]]
    table: Callable[[dict[str, Any]], list[str]]
    module: str = ""

    @property
    def plot_module(self) -> str:
        return self.module or f"benchmarks.{self.key}"


def _table(module: str, name: str) -> Callable[[dict[str, Any]], list[str]]:
    """``benchmarks.<module>.<name>``, imported when a table is printed (not at start-up)."""

    def table(result: dict[str, Any]) -> list[str]:
        printed: list[str] = getattr(importlib.import_module(f"benchmarks.{module}"), name)(result)
        return printed

    return table


def _ingest(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.ingest import run_ingest

    return run_ingest(workdir, args.count, args.repeat)


def _e2e(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.end_to_end import run_end_to_end

    return run_end_to_end(
        runs=args.e2e_runs,
        slices=args.slices,
        rows=args.rows,
        quiet_seconds=args.quiet_seconds,
        workdir=workdir,
        associations=args.e2e_associations,
    )


def _completion(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.completion import run_completion

    return run_completion(
        runs=args.completion_runs, quiet_seconds=args.completion_quiet_seconds, workdir=workdir
    )


def _inference(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.inference import run_inference

    return run_inference(
        workdir,
        slices=args.inference_slices,
        repeat=args.inference_runs,
        device=args.inference_device,
    )


def _startup(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.startup import run_startup

    return run_startup(
        runs=args.startup_runs,
        workdir=workdir,
        **({"cwd": args.startup_cwd.resolve()} if args.startup_cwd else {}),
    )


def _soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.soak import run_soak

    return run_soak(
        workdir, series=args.soak_series, ct_every=args.soak_ct_every, slices=args.soak_slices
    )


def _urgent(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.urgent import run_urgent

    return run_urgent(workdir, backlog=args.urgent_backlog, slices=args.urgent_slices)


def _encoding(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.encoding import run_encoding

    labels = tuple(int(v) for v in args.encoding_labels.split(","))
    return run_encoding(workdir, labels=labels, slices=args.encoding_slices)


def _idle(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.idle_associations import run_idle_associations

    return run_idle_associations(workdir, count=args.idle_associations, seconds=args.idle_seconds)


def _ray(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.ray_scaling import run_ray_scaling

    workers = tuple(int(v) for v in args.ray_workers.split(","))
    return run_ray_scaling(workdir, series=args.ray_series, slices=args.ray_slices, workers=workers)


# Every benchmark, in the order ``python -m benchmarks`` runs them. A new benchmark is a
# module under benchmarks/ and one entry here.
SECTIONS: tuple[Section, ...] = (
    Section("ingest", "ingest", _ingest, _table("ingest", "ingest_table")),
    Section("e2e", "end_to_end", _e2e, _table("end_to_end", "e2e_table")),
    Section("completion", "completion", _completion, _table("completion", "completion_table")),
    Section("inference", "inference", _inference, _table("inference", "inference_table")),
    Section("startup", "startup", _startup, _table("startup", "startup_table")),
    Section(
        "idle", "idle_associations", _idle, _table("idle_associations", "idle_associations_table")
    ),
    Section("urgent", "urgent", _urgent, _table("urgent", "urgent_table")),
    Section("soak", "soak", _soak, _table("soak", "soak_table")),
    Section("eta", "eta_accuracy", eta_accuracy.run, eta_accuracy.table),
    Section("encoding", "encoding", _encoding, _table("encoding", "encoding_table")),
    Section("state", "state_backends", state_backends.run, state_backends.table),
    Section("ray", "ray_scaling", _ray, _table("ray_scaling", "ray_table")),
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.only or [section.name for section in SECTIONS]
    workdir = Path(tempfile.mkdtemp(prefix="ainode-bench-"))
    collected: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
    }
    failed = False
    try:
        for section in SECTIONS:
            if section.name not in chosen:
                continue
            print(f"running {section.name} ...", file=sys.stderr, flush=True)
            started = report.machine()
            try:
                collected[section.key] = section.run(args, workdir / section.name)
            except Exception as exc:  # report and go on with the next section
                failed = True
                collected[section.key] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            notes = report.write_section(
                args.results_dir,
                section.key,
                collected[section.key],
                started,
                report.find_plot(section.plot_module),
            )
            print("\n".join(notes), file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = report.write_summary(args.results_dir, [(s.key, s.table) for s in SECTIONS])
    m = collected["machine"]
    lines = [f"machine: {m['cpus']} x {m['cpu_model']}, GPU {m['gpu']}, load {m['load_average']}"]
    for section in SECTIONS:
        if section.key not in collected:
            continue
        if "error" in collected[section.key]:
            lines.append(f"{section.key}: FAILED {collected[section.key]['error'].splitlines()[0]}")
        else:
            lines.extend(section.table(collected[section.key]))
    print("\n".join(lines))
    print(f"wrote {summary}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(collected, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
