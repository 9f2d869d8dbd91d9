"""``ainode evaluate``: the command line over :func:`node.evaluation.evaluate`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from node.errors import AinodeError


def _threshold(text: str) -> tuple[str, float]:
    finding, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not finding or not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not FINDING=VALUE with VALUE in 0-1")
    return finding, number


def _print_summary(report: dict[str, Any]) -> None:
    counts = report["summary"]
    print(
        f"{report['plugin']['name']} {report['plugin']['version']} on {counts['cases']} cases: "
        f"{counts['ok']} evaluated, {counts['rejected']} rejected, {counts['failed']} failed"
    )
    for case in report["cases"]:
        if case["status"] != "ok":
            print(f"  {case['case']}: {case['status']}: {case['reason']}")
    for segment in (report["segmentation"] or {}).get("segments", []):
        dice, hd95 = segment["dice"], segment["hd95_mm"]
        hd_text = "n/a" if hd95["mean"] is None else f"{hd95['mean']:.2f} mm"
        print(
            f"  {segment['label']}: Dice mean {dice['mean']:.4f} median {dice['median']:.4f}, "
            f"HD95 mean {hd_text} (n={dice['n']})"
        )
    for finding in (report["classification"] or {}).get("findings", []):
        auc = finding["auc"]["value"]
        sens, spec = finding["sensitivity"]["value"], finding["specificity"]["value"]
        print(
            f"  {finding['finding']}: AUC {'n/a' if auc is None else f'{auc:.3f}'}, "
            f"sensitivity {'n/a' if sens is None else f'{sens:.3f}'}, "
            f"specificity {'n/a' if spec is None else f'{spec:.3f}'} at threshold "
            f"{finding['threshold']:g} (n={finding['n']})"
        )
    for finding in (report["detection"] or {}).get("findings", []):
        score = finding["froc_score"]
        print(
            f"  {finding['finding']}: FROC score {'n/a' if score is None else f'{score:.3f}'} "
            f"({finding['found']}/{finding['targets']} boxes found, "
            f"{finding['false_positives']} false positives on {finding['images']} images)"
        )
    if report.get("shadow"):
        shadow = report["shadow"]
        print(
            f"  shadow results of rule {shadow['rule']}: {shadow['cases_compared']} cases "
            f"compared, {shadow['cases_without_stored_result']} without a stored result"
        )


class Progress:
    """Cases done, elapsed time and an estimate of the time left.

    On a terminal one line is rewritten in place; otherwise (a log, a pipe) each case
    prints a plain line.
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.width = 0

    def __call__(self, done: int, total: int, case: str, status: str) -> None:
        elapsed = time.monotonic() - self.started
        left = elapsed / done * (total - done)
        text = (
            f"evaluate: {done}/{total} cases, {case}: {status}, "
            f"elapsed {elapsed:.1f} s, about {left:.1f} s left"
        )
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            if done == total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _evaluate(args: argparse.Namespace) -> int:
    from node.config import load_settings
    from node.evaluation.evaluate import (
        EvaluationOptions,
        ShadowSource,
        evaluate,
        write_report,
    )
    from node.logs import configure
    from node.orchestration.registry import PluginRegistry, select_device

    if args.compare_shadow and not args.rule:
        print("ainode: --compare-shadow needs --rule NAME", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
        configure(settings.logging.level, settings.logging.format)
        registry = PluginRegistry.discover(settings.workers.gpu_memory_budget_mb)
        registry.configure(settings.models, settings.templates_dir)
        device = select_device(args.device or settings.workers.device)
        options = EvaluationOptions(
            thresholds=dict(args.threshold or []),
            hit_criterion=args.hit,
            iou_threshold=args.iou,
            seed=args.seed,
        )
        shadow = (
            ShadowSource(args.rule, settings.database_path, settings.state.url)
            if args.compare_shadow
            else None
        )
        # The rule's input-quality policy where the configuration has it (rules made in
        # the console live in the database only: their jobs are still found by name).
        rule = next((r for r in settings.rules if r.name == args.rule), None)
        report = evaluate(
            args.plugin,
            args.dataset,
            registry=registry,
            device=device,
            templates_dir=settings.templates_dir,
            options=options,
            shadow=shadow,
            quality=rule.quality if rule is not None else None,
            progress=Progress(),
        )
        output = args.output or Path(f"evaluation-{args.plugin}")
        metrics, html = write_report(report, output)
    except (AinodeError, ValueError) as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    finally:
        if "registry" in locals():
            registry.unload_all()
    _print_summary(report)
    print(f"wrote {metrics} and {html}")
    return 0


def add_command(commands: Any) -> None:
    """Add ``evaluate`` to the ``ainode`` sub-commands."""
    parser = commands.add_parser(
        "evaluate",
        help="run a routine over a labelled dataset; metrics JSON and an HTML report",
        description=(
            "Run a routine over a labelled dataset (reference SEGs, labels.csv, boxes.csv; "
            "see node/evaluation/README.md) through the node's plugin registry and write "
            "metrics.json and report.html."
        ),
    )
    parser.add_argument("--plugin", required=True, help="plugin name (ainode plugins list)")
    parser.add_argument("--dataset", required=True, type=Path, help="dataset directory")
    parser.add_argument(
        "--output", type=Path, help="report directory (default: ./evaluation-PLUGIN)"
    )
    parser.add_argument("--config", type=Path, help="YAML configuration (default: embedded)")
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:N or auto (default: the configuration's workers.device)"
    )
    parser.add_argument(
        "--threshold",
        action="append",
        type=_threshold,
        metavar="FINDING=VALUE",
        help="operating threshold of a classification finding (overrides the template's)",
    )
    parser.add_argument(
        "--hit",
        choices=("centre", "iou"),
        default="centre",
        help="detection hit criterion: predicted centre inside the box (default) or IoU",
    )
    parser.add_argument(
        "--iou", type=float, default=0.3, help="IoU a hit needs with --hit iou (default 0.3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--compare-shadow",
        action="store_true",
        help="also score the stored results of --rule (shadow mode) against the dataset",
    )
    parser.add_argument(
        "--rule",
        help="rule whose stored results --compare-shadow reads; its input-quality policy "
        "applies to routines that declare validated_on",
    )
    parser.set_defaults(handler=_evaluate)
