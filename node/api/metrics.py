"""Prometheus metrics, computed when scraped.

Counters that must survive restarts (series completed, job durations,
export failures, quality skips) are derived from the state database; the DICOM
listener's counters (instances, bytes, associations, refused associations) and
the exporter's (objects and bytes sent per destination) count since the process
started. ``process_*``, ``python_*`` and ``ainode_build_info`` come with them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from node import __version__
from node.dicom.refusals import refused_associations
from node.state.metrics import MetricsQueries

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
            ("ainode_received_bytes", "bytes", "Bytes of instances stored since start"),
            ("ainode_associations", "associations", "DICOM associations accepted since start"),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], counts.get(key, 0))
            yield counter
        refused = CounterMetricFamily(
            "ainode_associations_refused",
            "DICOM associations refused since start, per reason",
            labels=["reason"],
        )
        for reason, n in sorted(refused_associations().items()):
            refused.add_metric([reason], n)
        yield refused

        sent_objects = CounterMetricFamily(
            "ainode_sent_objects", "Result objects sent since start", labels=["destination"]
        )
        sent_bytes = CounterMetricFamily(
            "ainode_sent_bytes", "Bytes of result objects sent since start", labels=["destination"]
        )
        sent = node.exporter.sent_counts()
        for destination in sorted({name for name, _ in sent}):
            sent_objects.add_metric([destination], sent.get((destination, "objects"), 0))
            sent_bytes.add_metric([destination], sent.get((destination, "bytes"), 0))
        yield sent_objects
        yield sent_bytes

        stored = MetricsQueries(node.db)
        series_completed = CounterMetricFamily(
            "ainode_series_completed", "Series completions (each generation counts)"
        )
        series_completed.add_metric([], stored.series_completions())
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
        for plugin in stored.job_durations(DURATION_BUCKETS):
            buckets = [(str(bound), float(n)) for bound, n in plugin.buckets]
            buckets.append(("+Inf", float(plugin.count)))
            durations.add_metric([plugin.plugin], buckets, plugin.total_seconds)
        yield durations

        failures = CounterMetricFamily(
            "ainode_export_failures", "Failed export attempts (retried or final)"
        )
        failures.add_metric([], stored.export_failures())
        yield failures

        skips = CounterMetricFamily(
            "ainode_quality_skips",
            "Jobs the input-quality gate skipped, per routine and failed check",
            labels=["plugin", "check"],
        )
        for skip in stored.quality_skips():
            skips.add_metric([skip.plugin, skip.check], skip.count)
        yield skips

        memory = GaugeMetricFamily(
            "ainode_gpu_memory_bytes", "GPU memory held by this process", labels=["device", "kind"]
        )
        # Only once the routines imported torch: the metric must not import it.
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                device = f"cuda:{index}"
                memory.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
                memory.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
        yield memory


def registry_for(node: Node) -> CollectorRegistry:
    """A registry of this node's metrics, the process's (``process_*``: RSS, CPU, open fds)
    and the interpreter's (``python_*``), and ``ainode_build_info``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    build = GaugeMetricFamily("ainode_build_info", "The node's version", labels=["version"])
    build.add_metric([__version__], 1)
    registry.register(_Constant(build))
    return registry


class _Constant(Collector):
    """A collector yielding a fixed metric (build info)."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self._metric
