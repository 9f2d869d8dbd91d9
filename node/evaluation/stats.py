"""Confidence intervals: Wilson score for proportions, seeded percentile bootstrap."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Two-sided 95 % normal quantile.
Z_95 = 1.959963984540054
#: Bootstrap resamples and seed used unless the caller says otherwise.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % confidence interval (None where undefined)."""

    value: float | None
    low: float | None
    high: float | None
    method: str

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "ci95": [self.low, self.high], "method": self.method}


def wilson(successes: int, total: int, z: float = Z_95) -> Interval:
    """Proportion ``successes / total`` with its Wilson score interval."""
    if total <= 0:
        return Interval(None, None, None, "wilson")
    p = successes / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), "wilson")


def bootstrap(
    statistic: Callable[[np.ndarray], float | None],
    size: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float | None, float | None]:
    """Percentile 95 % interval of ``statistic(indices)`` over resampled case indices.

    ``statistic`` gets an index array drawn with replacement from ``range(size)`` and
    returns None where the resample is degenerate (e.g. one class only); those are
    skipped. Returns ``(None, None)`` when fewer than half the resamples are usable.
    """
    if size < 2:
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = statistic(rng.integers(0, size, size))
        if value is not None and math.isfinite(value):
            values.append(value)
    if len(values) < resamples / 2:
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def summary(values: Sequence[float], *, seed: int = BOOTSTRAP_SEED) -> dict[str, object]:
    """n, mean (with bootstrap 95 % CI), median, min and max of finite ``values``."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return {
            "n": 0,
            "mean": None,
            "ci95": [None, None],
            "median": None,
            "min": None,
            "max": None,
        }
    low, high = bootstrap(lambda idx: float(finite[idx].mean()), finite.size, seed=seed)
    return {
        "n": int(finite.size),
        "mean": float(finite.mean()),
        "ci95": [low, high],
        "ci_method": "bootstrap percentile, cases resampled",
        "median": float(np.median(finite)),
        "min": float(finite.min()),
        "max": float(finite.max()),
    }
