"""Configured-model entries (the ``models:`` section of the node's config) for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugins.ct_organs.model import LABELS, SPEC


def ct_organs_model(kind: str, path: Path, **extra: Any) -> dict[str, Any]:
    """The ``ct_organs`` network exported to ``path`` as a ``kind`` (``onnx``, ``torchscript``)
    model with the built-in plugin's preprocessing; ``extra`` overrides or adds keys."""
    return {
        "type": kind,
        "path": str(path),
        "version": "0.1.0",
        "template": "ct_organs",
        "spacing_mm": list(SPEC.spacing_mm),
        "axcodes": SPEC.axcodes,
        "window": {"a_min": -1000, "a_max": 400},
        "labels": list(LABELS),
        "roi_size": list(SPEC.roi_size),
        "overlap": SPEC.overlap,
        "sw_batch_size": 1,
        **extra,
    }
