"""Comparing a rule's stored results with the evaluation (``ainode evaluate --compare-shadow``).

A rule in shadow mode runs its jobs and stores their results without sending them;
to judge it before go-live, those stored results are scored against the same
labelled dataset and set beside the fresh evaluation run. Stored results are found
the way the node keeps them on main: the state database's job rows for the rule
(latest job with a result directory per source series) and the objects the worker
wrote in ``results/<study>/<series>/job-<id>/``. A dataset case is matched to a job
by its SeriesInstanceUID.

Per case and template segment the stored SEG is scored against the reference
(Dice, HD95, as in the evaluation) and against the evaluation's own prediction
(agreement: a stored result that differs from a rerun on the same images shows a
changed model, template or input). Only SEG results are compared so far; cases
whose stored results hold no SEG are listed with that note.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from node.evaluation.dataset import DatasetError
from node.evaluation.segmentation import reference_masks, score_segment
from node.evaluation.stats import summary
from node.results.kinds import ResultKind, file_tag, tag_kind
from node.results.template import ResultTemplate
from node.runtime.volume import Volume

log = logging.getLogger(__name__)

#: Where the stored results come from, written into the report.
SOURCE = "node job results (state database job rows, results/<study>/<series>/job-<id>/)"
_SEG_ORDER = (ResultKind.SEG, ResultKind.LABELMAP_SEG)


@dataclass(frozen=True)
class StoredResult:
    """The latest stored result of a rule for one source series."""

    job_id: int
    state: str
    plugin: str
    result_dir: Path


def stored_results(database_path: Path, rule: str) -> dict[str, StoredResult]:
    """``{SeriesInstanceUID: latest job with results}`` of ``rule`` in the node's database.

    Raises
    ------
    DatasetError
        When the database file does not exist (a path typo would otherwise create one).
    """
    from node.jobs.queue import JobQueue
    from node.state.db import Database

    if not database_path.is_file():
        raise DatasetError(f"{database_path}: no node state database here (check --config)")
    db = Database(database_path)
    try:
        found: dict[str, StoredResult] = {}
        for job in sorted(JobQueue(db).jobs(), key=lambda j: j.id):
            if job.rule == rule and job.result_dir is not None:
                found[job.series_uid] = StoredResult(job.id, job.state, job.plugin, job.result_dir)
        return found
    finally:
        db.close()


def _stored_seg(result_dir: Path) -> Path | None:
    if not result_dir.is_dir():
        return None
    by_kind: dict[ResultKind, Path] = {}
    for path in sorted(result_dir.glob("*.dcm")):
        tag = file_tag(path.name)
        if tag is not None:
            by_kind.setdefault(tag_kind(tag), path)
    return next((by_kind[k] for k in _SEG_ORDER if k in by_kind), None)


def compare_case(
    stored: StoredResult | None,
    volume: Volume,
    predicted: np.ndarray | None,
    references: Mapping[int, np.ndarray],
    template: ResultTemplate,
) -> dict[str, Any]:
    """One case's row: the stored SEG against the reference and the evaluation's prediction."""
    if stored is None:
        return {"status": "no stored result", "segments": []}
    row: dict[str, Any] = {
        "job_id": stored.job_id,
        "job_state": stored.state,
        "job_plugin": stored.plugin,
        "result_dir": str(stored.result_dir),
        "segments": [],
    }
    path = _stored_seg(stored.result_dir)
    if path is None:
        return row | {"status": "no SEG in the stored results"}
    try:
        stored_masks = reference_masks((pydicom.dcmread(path),), (path,), volume, template)
    except DatasetError as exc:
        return row | {"status": f"stored SEG not comparable: {exc}"}
    for segment in template.segments:
        value = segment.label_value
        if value not in stored_masks:
            continue
        mask = stored_masks[value]
        item: dict[str, Any] = {"label_value": value, "label": segment.label}
        if value in references:
            score = score_segment(mask, references[value], volume.spacing)
            item |= {"dice": score.dice, "hd95_mm": score.hd95_mm}
        if predicted is not None:
            agreement = score_segment(mask, predicted == value, volume.spacing)
            item |= {"agreement_dice": agreement.dice, "agreement_hd95_mm": agreement.hd95_mm}
        row["segments"].append(item)
    return row | {"status": "compared"}


def summarise(
    rule: str,
    database: Path,
    rows: Sequence[Mapping[str, Any]],
    evaluated_cases: Sequence[Mapping[str, Any]],
    template: ResultTemplate,
    seed: int,
) -> dict[str, Any]:
    """The report's ``shadow`` section from the per-case rows (``rows[i]["case"]`` set).

    The evaluation's Dice and HD95 beside the stored ones are summarised over the same
    cases (those with a compared stored result), so the two columns are comparable.
    """
    compared = {r["case"] for r in rows if r["status"] == "compared"}
    fresh = [
        item
        for case in evaluated_cases
        if case["case"] in compared
        for item in case.get("segments", [])
    ]
    segments = []
    for segment in template.segments:
        value = segment.label_value
        items = [item for row in rows for item in row["segments"] if item["label_value"] == value]
        if not items:
            continue
        own = [item for item in fresh if item["label_value"] == value]
        segments.append(
            {
                "label_value": value,
                "label": segment.label,
                "stored_dice": summary([i["dice"] for i in items if "dice" in i], seed=seed),
                "stored_hd95_mm": summary(
                    [i["hd95_mm"] for i in items if i.get("hd95_mm") is not None], seed=seed
                ),
                "evaluation_dice": summary([i["dice"] for i in own], seed=seed),
                "evaluation_hd95_mm": summary(
                    [i["hd95_mm"] for i in own if i["hd95_mm"] is not None], seed=seed
                ),
                "agreement_dice": summary(
                    [i["agreement_dice"] for i in items if "agreement_dice" in i], seed=seed
                ),
            }
        )
    return {
        "rule": rule,
        "source": SOURCE,
        "database": str(database),
        "cases_compared": len(compared),
        "cases_without_stored_result": sum(1 for r in rows if r["status"] == "no stored result"),
        "segments": segments,
        "cases": list(rows),
    }


def _mean_ci(block: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not block or block.get("mean") is None:
        return "&ndash;"
    low, high = block.get("ci95") or [None, None]
    text = f"{block['mean']:.{digits}f}"
    if low is not None and high is not None:
        text += f" ({low:.{digits}f}&ndash;{high:.{digits}f})"
    return text


def render_shadow(section: Mapping[str, Any]) -> str:
    """The report's shadow-comparison section (HTML)."""
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "Segment",
            "Stored Dice mean (95% CI)",
            "Evaluation Dice, same cases",
            "Stored HD95 mm",
            "Evaluation HD95 mm, same cases",
            "Agreement Dice (stored vs rerun)",
        )
    )
    body = "".join(
        "<tr>"
        f"<td>{escape(s['label'])}</td>"
        f'<td class="num">{_mean_ci(s["stored_dice"])}</td>'
        f'<td class="num">{_mean_ci(s["evaluation_dice"])}</td>'
        f'<td class="num">{_mean_ci(s["stored_hd95_mm"], 2)}</td>'
        f'<td class="num">{_mean_ci(s["evaluation_hd95_mm"], 2)}</td>'
        f'<td class="num">{_mean_ci(s["agreement_dice"])}</td>'
        "</tr>"
        for s in section["segments"]
    )
    cases = "".join(
        f"<tr><td>{escape(str(r.get('case', '')))}</td><td>{escape(str(r.get('job_id', '-')))}"
        f"</td><td>{escape(r['status'])}</td></tr>"
        for r in section["cases"]
    )
    return (
        f'<section id="shadow"><h2>Stored results of rule {escape(section["rule"])}</h2>'
        f'<p class="muted">Source: {escape(section["source"])}; database '
        f"<code>{escape(section['database'])}</code>. {section['cases_compared']} cases "
        f"compared, {section['cases_without_stored_result']} without a stored result.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "<table><thead><tr><th>Case</th><th>Job</th><th>Stored result</th></tr></thead>"
        f"<tbody>{cases}</tbody></table></section>"
    )
