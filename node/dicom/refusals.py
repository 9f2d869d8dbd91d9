"""Associations the DICOM listener refused, counted per reason since the process started.

Exposed as ``ainode_associations_refused_total{reason}`` by :mod:`node.api.metrics`.
"""

from __future__ import annotations

import threading
from collections import Counter

_refused: Counter[str] = Counter()
_refused_lock = threading.Lock()


def association_refused(reason: str) -> None:
    """Count a DICOM association the node refused.

    ``reason`` is a short fixed label (``too_many_associations``,
    ``calling_ae_not_allowed``, ...), never a peer's AE title or address.
    """
    with _refused_lock:
        _refused[reason] += 1


def refused_associations() -> dict[str, int]:
    """Associations refused since the process started, per reason."""
    with _refused_lock:
        return dict(_refused)
