"""``make demo``: the whole loop on one machine, Orthanc -> node -> Orthanc.

1. Start the development Orthanc from ``orthanc/orthanc.json`` (storage in
   ``var/orthanc``), or reuse one already answering on its HTTP port.
2. Start the node (``ainode serve``) with results going back to that Orthanc, and
   register it in Orthanc as modality ``ainode``.
3. Generate a synthetic chest CT, upload it to Orthanc over REST and ask Orthanc to
   send it to the node (``POST /modalities/ainode/store``).
4. Wait for the SEG and SR series to appear in the same study, print Orthanc Explorer
   links and the time each phase took, then keep running until Ctrl-C (``--exit``
   returns at once).

The node's files live in ``var/demo/`` (configuration, log, data directory), recreated
on every run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, cast

import httpx
import pydicom
import pyorthanc

from node.config import BUILT_IN_CHEST_RULE
from tools.net import LOCALHOST, free_port, port_is_free
from tools.node_process import PROJECT_ROOT, NodeProcess, NodeStartError
from tools.orthanc import OrthancError, OrthancServer
from tools.orthanc_rest import (
    explorer_url,
    instance_dataset,
    is_up,
    lookup_study,
    send_to_modality,
    upload_many,
    wait_for_series,
)

log = logging.getLogger(__name__)

DEFAULT_ORTHANC_CONFIG = PROJECT_ROOT / "orthanc" / "orthanc.json"
DEMO_DIR = PROJECT_ROOT / "var" / "demo"


class Timings:
    """Wall-clock seconds of each named phase, in order."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"... {name}", flush=True)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases.append((name, time.perf_counter() - started))

    def seconds(self, name: str) -> float:
        return dict(self.phases)[name]


def sr_measurements(sr: pydicom.Dataset) -> list[tuple[str, str, float, str]]:
    """``(tracking identifier, concept, value, unit)`` of each measurement group's NUM items."""
    found: list[tuple[str, str, float, str]] = []

    def meaning(item: pydicom.Dataset) -> str:
        names = item.get("ConceptNameCodeSequence")
        return str(names[0].CodeMeaning) if names else ""

    def walk(items: Sequence[pydicom.Dataset]) -> None:
        for item in items:
            children = item.get("ContentSequence") or []
            tracking = next(
                (str(c.TextValue) for c in children if meaning(c) == "Tracking Identifier"), None
            )
            if tracking is not None:
                for child in children:
                    if child.ValueType == "NUM" and child.get("MeasuredValueSequence"):
                        value = child.MeasuredValueSequence[0]
                        unit = str(value.MeasurementUnitsCodeSequence[0].CodeValue)
                        found.append((tracking, meaning(child), float(value.NumericValue), unit))
            elif children:
                walk(children)

    walk(sr.get("ContentSequence") or [])
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description="Send a synthetic chest CT through Orthanc and the node; show the results.",
    )
    parser.add_argument("--exit", action="store_true", help="exit once results are shown")
    parser.add_argument("--slices", type=int, default=100, help="phantom slices")
    parser.add_argument("--rows", type=int, default=256, help="phantom rows = columns")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (fixes its UIDs)")
    parser.add_argument("--orthanc-config", type=Path, default=DEFAULT_ORTHANC_CONFIG)
    parser.add_argument(
        "--quiet-seconds", type=float, default=3.0, help="node's series completion quiet period"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for results")
    parser.add_argument(
        "--work-dir", type=Path, default=DEMO_DIR, help="node config, log and data (recreated)"
    )
    parser.add_argument(
        "--dicom-port", type=int, default=11112, help="node DICOM port if free (0: any free)"
    )
    parser.add_argument(
        "--http-port", type=int, default=8080, help="node HTTP port if free (0: any free)"
    )
    return parser.parse_args(argv)


def _pick_port(preferred: int) -> int:
    if preferred and port_is_free(preferred, "0.0.0.0"):
        return preferred
    return free_port()


def node_config(args: argparse.Namespace, pacs: dict[str, Any]) -> dict[str, Any]:
    """The demo node: the requested ports when free, results to ``pacs``, the chest rule."""
    return {
        "node": {
            "ae_title": "AINODE",
            "dicom_port": _pick_port(args.dicom_port),
            "http_port": _pick_port(args.http_port),
            "data_dir": str(args.work_dir.resolve() / "data"),
        },
        "completion": {"series_quiet_seconds": args.quiet_seconds, "poll_seconds": 0.5},
        "destinations": {"pacs": pacs},
        "rules": [{**BUILT_IN_CHEST_RULE, "send_to": ["pacs"]}],
    }


def _orthanc(stack: ExitStack, config: Path, timings: Timings) -> tuple[pyorthanc.Orthanc, bool]:
    """A client of the Orthanc on the configured HTTP port, started here if none answers;
    True when started."""
    probe = OrthancServer(config_file=config, workdir=config.resolve().parent.parent / "var")
    if is_up(probe.client):
        return stack.enter_context(probe.client), False
    with timings.phase("start Orthanc"):
        stack.enter_context(probe)
    return probe.client, True


def run(args: argparse.Namespace) -> int:
    from tools.synthetic.chest_ct import make_chest_ct  # scipy: only when needed

    timings = Timings()
    with ExitStack() as stack:
        pacs, started_orthanc = _orthanc(stack, args.orthanc_config, timings)
        system = cast(dict[str, Any], pacs.get_system())
        how = f"started from {args.orthanc_config}" if started_orthanc else "reused"
        print(f"Orthanc {system['Version']} AET {system['DicomAet']}:{system['DicomPort']} ({how})")

        shutil.rmtree(args.work_dir, ignore_errors=True)
        destination = {
            "ae_title": system["DicomAet"],
            "host": LOCALHOST,
            "port": system["DicomPort"],
        }
        with timings.phase("start node"):
            node = stack.enter_context(
                NodeProcess(node_config(args, destination), workdir=args.work_dir)
            )
        pacs.put_modalities_id(
            "ainode", json={"AET": node.ae_title, "Host": LOCALHOST, "Port": node.dicom_port}
        )
        print(f"node AET {node.ae_title}:{node.dicom_port}, {node.url}, log {node.log_path}")

        with timings.phase("generate phantom"):
            datasets, truth = make_chest_ct(
                n_slices=args.slices, rows=args.rows, columns=args.rows, seed=args.seed
            )
        study_uid = str(datasets[0].StudyInstanceUID)
        previous = lookup_study(pacs, study_uid)
        if previous is not None:  # same seed, same UIDs: start from a clean study
            pacs.delete_studies_id(previous)
        with timings.phase("upload to Orthanc (REST)"):
            upload_many(pacs, datasets)
        study_id = lookup_study(pacs, study_uid)
        if study_id is None:
            raise OrthancError("the uploaded study is not in Orthanc")
        with timings.phase("send Orthanc -> node (C-STORE)"):
            answer = send_to_modality(pacs, "ainode", [study_id], timeout=args.timeout)
        if answer.get("FailedInstancesCount"):
            print(f"Orthanc could not send every instance: {answer}", file=sys.stderr)
            return 1
        try:
            with timings.phase("wait for SEG + SR in Orthanc"):
                found = wait_for_series(pacs, study_uid, ["SEG", "SR"], timeout=args.timeout)
        except TimeoutError:
            print(f"no SEG + SR after {args.timeout:.0f} s; node log tail:", file=sys.stderr)
            print(node.log_tail(), file=sys.stderr)
            return 1

        print()
        print(f"Source study  {explorer_url(pacs, 'study', study_id)}")
        for modality, label in (("SEG", "SEG series"), ("SR", "SR series")):
            for series in found[modality]:
                print(f"{label:<13} {explorer_url(pacs, 'series', series['ID'])}")
        print(f"Node results  {node.results_dir}")
        print(
            f"\nPhantom truth: right lung {truth.right_lung_cm3:.1f} cm3, "
            f"left lung {truth.left_lung_cm3:.1f} cm3. The SR says:"
        )
        sr_instance = found["SR"][0]["Instances"][0]
        for tracking, concept, value, unit in sr_measurements(instance_dataset(pacs, sr_instance)):
            print(f"  {tracking:<14} {concept:<24} {value:10.1f} {unit}")
        print("\nTimings (seconds)")
        for name, seconds in timings.phases:
            print(f"  {name:<32} {seconds:8.2f}")
        total = timings.seconds("send Orthanc -> node (C-STORE)") + timings.seconds(
            "wait for SEG + SR in Orthanc"
        )
        print(f"  {'send + results (end to end)':<32} {total:8.2f}")
        print(f"  (includes the node's {args.quiet_seconds:g} s series quiet period)")

        if not args.exit:
            print("\nRunning; press Ctrl-C to stop Orthanc and the node.", flush=True)
            try:
                while node.running():
                    time.sleep(1.0)
                print("the node exited; log tail:\n" + node.log_tail(), file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("\nstopping")
    return 0


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tools.demo``; returns the exit status."""
    args = parse_args(argv)
    # Orthanc and the node run in their own sessions: make SIGTERM unwind and stop them.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        return run(args)
    except (NodeStartError, OrthancError, httpx.HTTPError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
