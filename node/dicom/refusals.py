"""Associations the DICOM listener refused, counted per reason since the process started.

Exposed as ``ainode_associations_refused_total{reason}`` by :mod:`node.api.metrics`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

_refused: Counter[str] = Counter()
_refused_lock = threading.Lock()
#: Also told each refusal (a receiver process's are counted by the node's process).
_forward: Callable[[str], object] | None = None


def forward_refusals(to: Callable[[str], object]) -> None:
    """Also pass each refusal's reason to ``to`` (a receiver process: to the main one)."""
    global _forward
    _forward = to


def association_refused(reason: str) -> None:
    """Count a DICOM association the node refused.

    ``reason`` is a short fixed label (``too_many_associations``,
    ``calling_ae_not_allowed``, ...), never a peer's AE title or address.
    """
    with _refused_lock:
        _refused[reason] += 1
    if _forward is not None:
        _forward(reason)


def refused_associations() -> dict[str, int]:
    """Associations refused since the process started, per reason."""
    with _refused_lock:
        return dict(_refused)
