"""Report figures with matplotlib (Agg backend), returned as inline SVG text."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

#: SVG text keeps the report self-contained and selectable; fonts become paths.
plt.rcParams["svg.fonttype"] = "path"
plt.rcParams["svg.hashsalt"] = "ainode-evaluation"  # stable ids between runs


def _svg(figure: Figure, title: str) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    # Drop the XML prolog and DOCTYPE: the SVG is embedded in HTML.
    text = text[text.index("<svg") :]
    return re.sub(r"<svg ", f'<svg role="img" aria-label="{title}" class="plot" ', text, count=1)


def box_plot(series: Mapping[str, Sequence[float]], ylabel: str, title: str) -> str:
    """One box (with every case as a dot) per segment."""
    figure, axes = plt.subplots(figsize=(max(3.5, 1.3 * len(series) + 2), 3.2))
    names = list(series)
    data = [list(series[n]) for n in names]
    axes.boxplot(data, tick_labels=names, showmeans=True)
    for position, values in enumerate(data, start=1):
        axes.scatter([position] * len(values), values, s=12, alpha=0.6, color="tab:blue")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    return _svg(figure, title)


def roc_plot(finding: Mapping[str, Any]) -> str:
    """Empirical ROC curve with the operating point (1 - specificity, sensitivity)."""
    figure, axes = plt.subplots(figsize=(3.8, 3.6))
    curve = finding["roc_curve"]
    auc = finding["auc"]["value"]
    axes.plot(
        curve["fpr"],
        curve["tpr"],
        drawstyle="default",
        label=f"ROC (AUC {auc:.3f})" if auc is not None else "ROC",
    )
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    sensitivity, specificity = finding["sensitivity"]["value"], finding["specificity"]["value"]
    if sensitivity is not None and specificity is not None:
        axes.plot(
            [1 - specificity],
            [sensitivity],
            marker="o",
            color="tab:red",
            linestyle="none",
            label=f"threshold {finding['threshold']:g}",
        )
    axes.set_xlabel("1 - specificity")
    axes.set_ylabel("sensitivity")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    title = f"ROC: {finding['finding']}"
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    return _svg(figure, title)


def froc_plot(finding: Mapping[str, Any]) -> str:
    """FROC curve on a log2 FP-per-image axis with the reported operating points."""
    figure, axes = plt.subplots(figsize=(4.4, 3.4))
    curve = finding["froc_curve"]
    pairs = sorted(zip(curve["fp_per_image"], curve["sensitivity"], strict=True))
    if pairs:
        xs, ys = zip(*pairs, strict=True)
        axes.step(xs, ys, where="post", label="FROC")
    rates = finding["sensitivity_at_fp_per_image"]
    axes.plot(
        [float(r) for r in rates],
        list(rates.values()),
        "o",
        color="tab:red",
        label="reported points",
    )
    axes.set_xscale("log", base=2)
    axes.set_xlim(0.1, 10)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("false positives per image")
    axes.set_ylabel("sensitivity")
    title = f"FROC: {finding['finding']}"
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3, which="both")
    return _svg(figure, title)
