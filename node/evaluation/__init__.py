"""Evaluation of a routine on a labelled dataset (``ainode evaluate``); see README.md here."""

from node.evaluation.dataset import DatasetError, EvaluationDataset
from node.evaluation.evaluate import (
    EvaluationError,
    EvaluationOptions,
    evaluate,
    write_report,
)

__all__ = [
    "DatasetError",
    "EvaluationDataset",
    "EvaluationError",
    "EvaluationOptions",
    "evaluate",
    "write_report",
]
