"""Prometheus metrics, computed when scraped.

Counters that must survive restarts (series completed, job durations,
export failures) are derived from the state database; the DICOM listener's
counters (instances, bytes, associations) count since the process started.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from node.app import Node

#: Job duration buckets (seconds): a CPU lung job takes ~10-60 s, a GPU one a few.
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        counts = node.scp.counts
        for name, key, help_text in (
            ("ainode_instances_received", "stored", "Instances stored since start"),
            ("ainode_instances_duplicate", "duplicates", "Duplicate instances ignored"),
            ("ainode_instances_refused", "refused", "Instances refused with an error status"),
            ("ainode_bytes_received", "bytes", "Bytes of instances stored since start"),
            ("ainode_associations", "associations", "DICOM associations accepted since start"),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], counts.get(key, 0))
            yield counter
        rejected = CounterMetricFamily(
            "ainode_associations_rejected",
            "DICOM associations rejected by node.accept since start",
            labels=["reason"],
        )
        for reason in ("calling-ae", "called-ae"):
            rejected.add_metric([reason], counts.get(f"rejected_{reason}", 0))
        yield rejected

        db = node.db
        completed = db.query("SELECT COALESCE(SUM(generation), 0) AS n FROM series")[0]["n"]
        series_completed = CounterMetricFamily(
            "ainode_series_completed", "Series completions (each generation counts)"
        )
        series_completed.add_metric([], completed)
        yield series_completed

        depth = GaugeMetricFamily(
            "ainode_queue_depth", "Queued jobs per priority (0 most urgent)", labels=["priority"]
        )
        by_priority = node.queue.depth_by_priority()
        for priority in range(10):
            depth.add_metric([str(priority)], by_priority.get(priority, 0))
        yield depth

        states = GaugeMetricFamily("ainode_jobs", "Jobs per state", labels=["state"])
        for state, n in node.queue.depth().items():
            states.add_metric([state], n)
        yield states

        durations = HistogramMetricFamily(
            "ainode_job_duration_seconds",
            "Time from start of inference to done, per plugin (finished jobs)",
            labels=["plugin"],
        )
        cases = ", ".join(
            f"SUM(CASE WHEN finished_at - started_at <= {bound} THEN 1 ELSE 0 END) AS b{i}"
            for i, bound in enumerate(DURATION_BUCKETS)
        )
        rows = db.query(
            f"SELECT plugin, COUNT(*) AS n, SUM(finished_at - started_at) AS total, {cases}"
            " FROM jobs WHERE state = 'done' AND started_at IS NOT NULL"
            " AND finished_at IS NOT NULL GROUP BY plugin"
        )
        for row in rows:
            buckets = [(str(b), float(row[f"b{i}"])) for i, b in enumerate(DURATION_BUCKETS)]
            buckets.append(("+Inf", float(row["n"])))
            durations.add_metric([row["plugin"]], buckets, float(row["total"] or 0.0))
        yield durations

        failures = CounterMetricFamily(
            "ainode_export_failures", "Failed export attempts (retried or final)"
        )
        failed = db.query(
            "SELECT COUNT(*) AS n FROM job_events WHERE event = 'export_retry_scheduled'"
            " OR (event = 'failed' AND detail LIKE 'export failed%')"
        )[0]["n"]
        failures.add_metric([], failed)
        yield failures

        memory = GaugeMetricFamily(
            "ainode_gpu_memory_bytes", "GPU memory held by this process", labels=["device", "kind"]
        )
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                device = f"cuda:{index}"
                memory.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
                memory.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
        yield memory


def registry_for(node: Node) -> CollectorRegistry:
    """A registry of this node's metrics only (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry
