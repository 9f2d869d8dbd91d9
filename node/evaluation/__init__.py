"""Evaluation of a routine on a labelled dataset (``ainode evaluate``); see README.md here.

The names below are imported on first use, so that building the ``ainode`` command line
does not import torch, MONAI and highdicom. The function ``evaluate`` is
``node.evaluation.evaluate.evaluate`` (the package attribute of that name is the module).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.evaluation.dataset import DatasetError, EvaluationDataset
    from node.evaluation.evaluate import EvaluationError, EvaluationOptions, write_report

#: Exported name → the module that defines it.
_LAZY = {
    "DatasetError": "dataset",
    "EvaluationDataset": "dataset",
    "EvaluationError": "evaluate",
    "EvaluationOptions": "evaluate",
    "write_report": "evaluate",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DatasetError",
    "EvaluationDataset",
    "EvaluationError",
    "EvaluationOptions",
    "write_report",
]
