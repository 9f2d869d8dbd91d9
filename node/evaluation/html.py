"""The self-contained HTML evaluation report (inline CSS and SVG; nothing is fetched)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from node.evaluation import plots

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plot{max-width:100%;height:auto}
.rejected{background:#fff4e5}.failed{background:#fdecea}.muted{color:#666}
code{font-size:.85rem}
"""


def _num(value: object, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _ci(interval: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not interval:
        return "&ndash;"
    low, high = interval.get("ci95") or [None, None]
    if low is None or high is None:
        return "&ndash;"
    return f"{low:.{digits}f}&ndash;{high:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(value: object, digits: int = 3) -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return f'<td class="num">{_num(value, digits)}</td>' if numeric else f"<td>{_num(value)}</td>"


def _segmentation(report: Mapping[str, Any]) -> str:
    section = report["segmentation"]
    rows = []
    dice_series: dict[str, list[float]] = {}
    hd_series: dict[str, list[float]] = {}
    for segment in section["segments"]:
        dice, hd95 = segment["dice"], segment["hd95_mm"]
        rows.append(
            [
                f"<td>{escape(segment['label'])}</td>",
                _td(dice["n"]),
                _td(dice["mean"]),
                f'<td class="num">{_ci(dice)}</td>',
                _td(dice["median"]),
                _td(hd95["mean"], 2),
                f'<td class="num">{_ci(hd95, 2)}</td>',
                _td(hd95["median"], 2),
            ]
        )
    for case in report["cases"]:
        for item in case.get("segments", []):
            if item["dice"] is not None:
                dice_series.setdefault(item["label"], []).append(item["dice"])
            if item["hd95_mm"] is not None:
                hd_series.setdefault(item["label"], []).append(item["hd95_mm"])
    figures = []
    if dice_series:
        figures.append(plots.box_plot(dice_series, "Dice", "Dice per segment"))
    if hd_series:
        figures.append(plots.box_plot(hd_series, "HD95 (mm)", "95th-percentile Hausdorff"))
    table = _table(
        [
            "Segment",
            "Cases",
            "Dice mean",
            "95% CI",
            "Dice median",
            "HD95 mean (mm)",
            "95% CI",
            "HD95 median (mm)",
        ],
        rows,
    )
    return (
        '<section id="segmentation"><h2>Segmentation</h2>'
        '<p class="muted">Dice: monai.metrics.compute_dice; HD95: '
        "monai.metrics.compute_hausdorff_distance (percentile 95, voxel spacing, mm). "
        "Confidence intervals: seeded bootstrap over cases.</p>"
        f'{table}<div class="plots">{"".join(figures)}</div></section>'
    )


def _classification(report: Mapping[str, Any]) -> str:
    section = report["classification"]
    rows, figures = [], []
    for finding in section["findings"]:
        rows.append(
            [
                f"<td>{escape(finding['finding'])}</td>",
                _td(finding["n"]),
                _td(finding["positives"]),
                _td(finding["auc"]["value"]),
                f'<td class="num">{_ci(finding["auc"])}</td>',
                f'<td>{_num(finding["threshold"])} <span class="muted">'
                f"({escape(finding['threshold_source'])})</span></td>",
                _td(finding["sensitivity"]["value"]),
                f'<td class="num">{_ci(finding["sensitivity"])}</td>',
                _td(finding["specificity"]["value"]),
                f'<td class="num">{_ci(finding["specificity"])}</td>',
                "<td>{tp}/{fp}/{tn}/{fn}</td>".format(**finding["confusion"]),
            ]
        )
        if finding["n"]:
            figures.append(plots.roc_plot(finding))
    table = _table(
        [
            "Finding",
            "Cases",
            "Positive",
            "AUC",
            "95% CI (bootstrap)",
            "Threshold",
            "Sensitivity",
            "95% CI (Wilson)",
            "Specificity",
            "95% CI (Wilson)",
            "TP/FP/TN/FN",
        ],
        rows,
    )
    return (
        '<section id="classification"><h2>Classification</h2>'
        '<p class="muted">AUC: monai.metrics.compute_roc_auc; sensitivity and specificity at '
        "probability &ge; threshold: monai.metrics.get_confusion_matrix and "
        "compute_confusion_matrix_metric.</p>"
        f'{table}<div class="plots">{"".join(figures)}</div></section>'
    )


def _detection(report: Mapping[str, Any]) -> str:
    section = report["detection"]
    criterion = section["hit_criterion"]
    if criterion == "iou":
        rule = f"IoU &ge; {section['iou_threshold']:g} with the reference box"
    else:
        rule = "centre of the predicted box (or the point) inside the reference box"
    rows, figures = [], []
    rates: list[str] = []
    for finding in section["findings"]:
        at = finding["sensitivity_at_fp_per_image"]
        rates = list(at)
        rows.append(
            [
                f"<td>{escape(finding['finding'])}</td>",
                _td(finding["images"]),
                _td(finding["targets"]),
                _td(finding["found"]),
                _td(finding["false_positives"]),
                *(_td(at[r]) for r in rates),
                _td(finding["froc_score"]),
            ]
        )
        if finding["froc_curve"]["fp_per_image"]:
            figures.append(plots.froc_plot(finding))
    table = _table(
        [
            "Finding",
            "Images",
            "Boxes",
            "Found",
            "False positives",
            *(f"Sens @ {r} FP/img" for r in rates),
            "FROC",
        ],
        rows,
    )
    return (
        '<section id="detection"><h2>Detection (FROC)</h2>'
        f'<p class="muted">Hit: {rule}. Curve and score: monai.metrics.compute_froc_curve_data '
        "and compute_froc_score (mean sensitivity over the FP rates shown).</p>"
        f'{table}<div class="plots">{"".join(figures)}</div></section>'
    )


def _cases(report: Mapping[str, Any]) -> str:
    rows = []
    for case in report["cases"]:
        details = []
        for item in case.get("segments", []):
            details.append(
                f"{escape(item['label'])}: Dice {_num(item['dice'])}, HD95 "
                f"{_num(item['hd95_mm'], 2)} mm"
            )
        for item in case.get("classifications", []):
            details.append(
                f"{escape(item['finding'])}: label {item['label']}, p {_num(item['probability'])}"
                + (f" ({escape(item['note'])})" if item.get("note") else "")
            )
        if "detections" in case:
            found = sum(1 for d in case["detections"] if d["hit"])
            details.append(
                f"detections: {len(case['detections'])} ({found} hitting a box); "
                f"reference boxes: {case['reference_boxes']}"
            )
        quality = case.get("quality")
        if quality:
            details.append(
                f"input quality: {escape(quality['decision'])}"
                + "".join(f"; {escape(w)}" for w in quality["warnings"])
            )
        rows.append(
            [
                f"<td>{escape(case['case'])}</td>",
                f"<td>{escape(case['status'])}</td>",
                f"<td>{escape(case['reason'] or '')}</td>",
                _td(case["seconds"], 2),
                f"<td>{'<br>'.join(details)}</td>",
            ]
        )
    return (
        '<section id="cases"><h2>Cases</h2>'
        + _table(["Case", "Status", "Reason", "Seconds", "Results"], rows)
        + "</section>"
    )


def _shadow(report: Mapping[str, Any]) -> str:
    from node.evaluation.shadow import render_shadow

    return render_shadow(report["shadow"])


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML document (no external resources)."""
    plugin, template, dataset = report["plugin"], report["template"], report["dataset"]
    counts = report["summary"]
    header = _table(
        ["Plugin", "Version", "Template (SHA-256)", "Dataset (SHA-256)", "Device", "Created"],
        [
            [
                f"<td>{escape(plugin['name'])}</td>",
                f"<td>{escape(plugin['version'])}</td>",
                f"<td>{escape(template['name'])}<br><code>{escape(template['sha256'])}</code></td>",
                f"<td>{escape(dataset['path'])}<br><code>{escape(dataset['sha256'])}</code></td>",
                f"<td>{escape(report['device'])}</td>",
                f"<td>{escape(report['created'])}</td>",
            ]
        ],
    )
    status = (
        f"<p>{counts['cases']} cases: {counts['ok']} evaluated, "
        f'<span class="rejected">{counts["rejected"]} rejected by the routine</span>, '
        f'<span class="failed">{counts["failed"]} failed</span>. Rejected and failed cases '
        "are listed below and are not in the metrics.</p>"
    )
    sections = [header, status]
    if report.get("segmentation"):
        sections.append(_segmentation(report))
    if report.get("classification"):
        sections.append(_classification(report))
    if report.get("detection"):
        sections.append(_detection(report))
    if report.get("shadow"):
        sections.append(_shadow(report))
    sections.append(_cases(report))
    title = f"Evaluation of {plugin['name']} {plugin['version']}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="muted">ainode {escape(report["ainode_version"])}, report schema '
        f"{escape(report['schema'])} v{report['schema_version']}</p>"
        + "".join(sections)
        + "</body></html>\n"
    )
