"""Run the benchmarks, print a table and optionally write JSON.

Usage::

    python -m benchmarks                       # ingest + end-to-end
    python -m benchmarks --only ingest --count 303 --repeat 3
    python -m benchmarks --only e2e --e2e-runs 2 --json var/bench.json
    python -m benchmarks --only inference --inference-runs 2
    python -m benchmarks --only startup --startup-runs 10

Benchmarks measure; they assert nothing about speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    for tool, args in (("Orthanc", ["--version"]), ("storescu", ["--version"])):
        try:
            out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=10)
            info[tool] = out.stdout.splitlines()[0].strip() if out.stdout else None
        except (OSError, subprocess.SubprocessError):
            info[tool] = None
    return info


def e2e_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"End to end: {result['slices']}-slice {result['rows']}x{result['columns']} chest phantom, "
        f"Orthanc -> node -> Orthanc, quiet period {result['quiet_seconds']} s "
        f"(node start {result['node_start_s']} s)",
        f"  {'run':<4} {'upload':>8} {'send':>8} {'results':>8} {'total':>8}   (seconds)",
    ]
    for index, run in enumerate(result["runs"]):
        lines.append(
            f"  {index:<4} {run['upload_to_orthanc_s']:>8.2f} {run['send_to_node_s']:>8.2f} "
            f"{run['wait_for_results_s']:>8.2f} {run['total_s']:>8.2f}"
        )
    lines.append("  total = send + wait until SEG and SR are in Orthanc (upload not included)")
    events = result.get("job_events") or []
    if events:
        lines.append("  node job events (seconds since the job's first event):")
        first: dict[int, float] = {}
        for event in events:
            start = first.setdefault(event["job_id"], event["at"])
            detail = f"  {event['detail']}" if event["detail"] else ""
            lines.append(
                f"    job {event['job_id']:<3} {event['at'] - start:8.2f}  {event['event']}{detail}"
            )
    return lines


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
    parser.add_argument("--slices", type=int, default=100, help="phantom slices (e2e)")
    parser.add_argument("--rows", type=int, default=256, help="phantom rows = columns (e2e)")
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
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Section:
    """One benchmark: its ``--only`` name, its key in the report, how to run and print it.

    ``run`` gets the parsed arguments and a fresh work directory and returns a JSON-able
    dict; ``table`` turns that dict into printed lines.
    """

    name: str
    key: str
    run: Callable[[argparse.Namespace, Path], dict[str, Any]]
    table: Callable[[dict[str, Any]], list[str]]


def _ingest(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.ingest import run_ingest

    return run_ingest(workdir, args.count, args.repeat)


def ingest_table(result: dict[str, Any]) -> list[str]:
    from benchmarks.ingest import ingest_table

    return ingest_table(result)


def _e2e(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from benchmarks.end_to_end import run_end_to_end

    return run_end_to_end(
        runs=args.e2e_runs,
        slices=args.slices,
        rows=args.rows,
        quiet_seconds=args.quiet_seconds,
        workdir=workdir,
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


def _completion_table(result: dict[str, Any]) -> list[str]:
    from benchmarks.completion import completion_table

    return completion_table(result)


def _inference_table(result: dict[str, Any]) -> list[str]:
    from benchmarks.inference import inference_table

    return inference_table(result)


def _startup_table(result: dict[str, Any]) -> list[str]:
    from benchmarks.startup import startup_table

    return startup_table(result)


# Every benchmark, in the order ``python -m benchmarks`` runs them. A new benchmark is a
# module under benchmarks/ and one entry here.
SECTIONS: tuple[Section, ...] = (
    Section("ingest", "ingest", _ingest, ingest_table),
    Section("e2e", "end_to_end", _e2e, e2e_table),
    Section("completion", "completion", _completion, _completion_table),
    Section("inference", "inference", _inference, _inference_table),
    Section("startup", "startup", _startup, _startup_table),
)
DEFAULT_SECTIONS = ("ingest", "e2e")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.only or list(DEFAULT_SECTIONS)
    workdir = Path(tempfile.mkdtemp(prefix="ainode-bench-"))
    report: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    failed = False
    try:
        for section in SECTIONS:
            if section.name not in chosen:
                continue
            print(f"running {section.name} ...", file=sys.stderr, flush=True)
            try:
                report[section.key] = section.run(args, workdir / section.name)
            except Exception as exc:  # report and go on with the next section
                failed = True
                report[section.key] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    lines = [f"machine: {report['machine']['cpus']} CPUs, cuda={report['machine'].get('cuda')}"]
    for section in SECTIONS:
        if section.key not in report:
            continue
        if "error" in report[section.key]:
            lines.append(f"{section.key}: FAILED {report[section.key]['error'].splitlines()[0]}")
        else:
            lines.extend(section.table(report[section.key]))
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
