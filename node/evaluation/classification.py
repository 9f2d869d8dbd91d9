"""Classification metrics with MONAI: ROC AUC and sensitivity/specificity at a threshold.

* AUC: :func:`monai.metrics.compute_roc_auc`; 95 % CI by a seeded percentile bootstrap
  over cases (resamples with one class only are skipped).
* Sensitivity and specificity at the operating threshold (``probability >= threshold``
  is positive): :func:`monai.metrics.get_confusion_matrix` and
  :func:`monai.metrics.compute_confusion_matrix_metric`; 95 % Wilson intervals.
* The ROC curve drawn in the report is the empirical one (every distinct score is a
  threshold); it is for the plot only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_roc_auc, get_confusion_matrix

from node.contract.plugin import Classification
from node.evaluation.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    Interval,
    bootstrap,
    wilson,
)


@dataclass(frozen=True)
class ClassificationScores:
    """Metrics of one finding over the evaluated cases."""

    finding: str
    threshold: float
    threshold_source: str
    n: int
    positives: int
    negatives: int
    auc: Interval
    sensitivity: Interval
    specificity: Interval
    confusion: dict[str, int]
    roc: tuple[list[float], list[float]]

    def as_dict(self) -> dict[str, object]:
        return {
            "finding": self.finding,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "n": self.n,
            "positives": self.positives,
            "negatives": self.negatives,
            "auc": self.auc.as_dict(),
            "sensitivity": self.sensitivity.as_dict(),
            "specificity": self.specificity.as_dict(),
            "confusion": self.confusion,
            "roc_curve": {"fpr": self.roc[0], "tpr": self.roc[1]},
        }


def matched_probability(
    classifications: Sequence[Classification],
    sop_instance_uids: Sequence[str],
    finding: str,
    image_uid: str | None,
) -> tuple[float | None, str | None]:
    """The routine's probability for a labelled finding, and why there is none.

    ``image_uid`` None labels the series. An output on the same image (or, for a
    one-image case, on the series) matches; otherwise a series-level output for an
    image label, or image-level outputs for a series label. Several: the maximum.
    """
    single = len(sop_instance_uids) == 1
    exact: list[float] = []
    other: list[float] = []
    for item in classifications:
        if item.finding != finding:
            continue
        if item.frame is not None and not 0 <= item.frame < len(sop_instance_uids):
            return None, f"the routine gave frame {item.frame} of {len(sop_instance_uids)}"
        uid = None if item.frame is None else sop_instance_uids[item.frame]
        if uid == image_uid or (single and (uid is None or image_uid is None)):
            exact.append(item.probability)
        elif uid is None or image_uid is None:
            other.append(item.probability)
    chosen = exact or other
    if not chosen:
        return None, f"the routine gave no probability for {finding}"
    return max(chosen), None


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """MONAI's ROC AUC; None when only one class (or nothing) is present."""
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    value = compute_roc_auc(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels))
    return float(value)  # type: ignore[arg-type]


def confusion(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, int]:
    """True/false positives/negatives at ``scores >= threshold`` (MONAI's confusion matrix)."""
    if len(scores) == 0:
        return {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    y_pred = torch.as_tensor(scores >= threshold, dtype=torch.float32)[:, None]
    y = torch.as_tensor(labels, dtype=torch.float32)[:, None]
    matrix = get_confusion_matrix(y_pred, y, include_background=True).sum(dim=0)  # (1, 4)
    tp, fp, tn, fn = (int(v) for v in matrix[0])
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _rate(metric: str, counts: dict[str, int]) -> float | None:
    matrix = torch.tensor(
        [[counts["tp"], counts["fp"], counts["tn"], counts["fn"]]], dtype=torch.float64
    )
    value = float(compute_confusion_matrix_metric(metric, matrix)[0])
    return None if np.isnan(value) else value


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    """Empirical ROC points from (0, 0) to (1, 1), one per distinct score."""
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    fpr, tpr = [0.0], [0.0]
    for threshold in np.unique(scores)[::-1]:
        predicted = scores >= threshold
        tpr.append(float((predicted & (labels == 1)).sum() / max(positives, 1)))
        fpr.append(float((predicted & (labels == 0)).sum() / max(negatives, 1)))
    if fpr[-1] != 1.0 or tpr[-1] != 1.0:
        fpr.append(1.0)
        tpr.append(1.0)
    return fpr, tpr


def score_finding(
    finding: str,
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    threshold_source: str,
    *,
    seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> ClassificationScores:
    """All metrics of one finding from per-case probabilities and 0/1 labels."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=int)
    counts = confusion(scores, labels, threshold)
    auc = roc_auc(scores, labels)
    low, high = bootstrap(
        lambda idx: roc_auc(scores[idx], labels[idx]), len(scores), seed=seed, resamples=resamples
    )
    sensitivity = wilson(counts["tp"], counts["tp"] + counts["fn"])
    specificity = wilson(counts["tn"], counts["tn"] + counts["fp"])
    # MONAI gives the point values; Wilson gives the intervals around the same proportions.
    sens_value, spec_value = _rate("sensitivity", counts), _rate("specificity", counts)
    return ClassificationScores(
        finding=finding,
        threshold=threshold,
        threshold_source=threshold_source,
        n=len(scores),
        positives=int(labels.sum()),
        negatives=int((1 - labels).sum()),
        auc=Interval(auc, low, high, "bootstrap percentile, cases resampled"),
        sensitivity=Interval(sens_value, sensitivity.low, sensitivity.high, "wilson"),
        specificity=Interval(spec_value, specificity.low, specificity.high, "wilson"),
        confusion=counts,
        roc=roc_curve(scores, labels) if len(scores) else ([], []),
    )
