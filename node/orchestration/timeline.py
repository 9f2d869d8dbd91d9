"""The dashboard's timeline: jobs finished and the median seconds of each stage, per
time bin, from :meth:`~node.state.history.JobHistory.stage_samples`. Pure."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from node.state.history import STAGES, StageSample


def timeline(
    samples: Sequence[StageSample], *, since: float, until: float, bins: int
) -> dict[str, Any]:
    """``bins`` equal bins from ``since`` to ``until``; each with ``finished`` (jobs that
    ended done in it) and ``median_seconds`` per stage (None where no job measured it)."""
    if bins < 1 or until <= since:
        raise ValueError("a timeline needs at least one bin over a positive span")
    width = (until - since) / bins
    grouped: list[list[StageSample]] = [[] for _ in range(bins)]
    for sample in samples:
        if since <= sample.finished_at <= until:
            grouped[min(bins - 1, int((sample.finished_at - since) / width))].append(sample)
    rows = []
    for index, members in enumerate(grouped):
        medians: dict[str, float | None] = {}
        for stage in STAGES:
            values = [m.seconds[stage] for m in members if stage in m.seconds]
            medians[stage] = round(statistics.median(values), 3) if values else None
        rows.append(
            {"start": since + index * width, "finished": len(members), "median_seconds": medians}
        )
    return {
        "since": since,
        "until": until,
        "bin_seconds": width,
        "stages": list(STAGES),
        "finished": sum(len(m) for m in grouped),
        "bins": rows,
    }
