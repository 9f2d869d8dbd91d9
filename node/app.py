"""Wiring: one :class:`Node` owns every box and starts/stops them in order.

Start order: state → plugins → DICOM listener → completion timer →
workers → exporter. Stop is the reverse, so nothing new is accepted while
work in flight finishes.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from apscheduler.schedulers.background import BackgroundScheduler

from node.admin.service import AdminService
from node.completion import CompletionMonitor
from node.config import Settings, check_plugins_known
from node.dicom.scp import StorageSCP
from node.dispatch import Dispatcher
from node.export.exporter import Exporter, RecoveryProbe
from node.faults import check_fault_setting
from node.ingest import Ingestor
from node.pull.service import PullService, SenderCountChecker
from node.runtime.registry import PluginRegistry, select_devices
from node.runtime.worker import InferenceWorker
from node.spool import Spool
from node.state.db import Database, check_integrity
from node.state.dicom_audit import DicomAudit
from node.state.jobs import JobQueue
from node.state.pulls import PullStore
from node.state.series import SeriesStore

log = logging.getLogger(__name__)


class Node:
    """The whole service minus HTTP (see :mod:`node.api`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: str = "<config>",
        clock: Callable[[], float] = time.time,
        registry: PluginRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        if registry is None:
            registry = PluginRegistry.discover(settings.workers.gpu_memory_budget_mb)
            registry.configure(settings.models, settings.templates_dir)
        self.registry = registry
        check_plugins_known(
            settings, self.registry.names | set(self.registry.errors), source=source
        )
        data_dir = settings.node.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        check_integrity(settings.database_path)  # refuses to start on a damaged file
        self.db = Database(settings.database_path)
        self.series = SeriesStore(self.db)
        self.queue = JobQueue(self.db)
        self.spool = Spool(settings.spool_dir)
        self.dicom_audit = DicomAudit(self.db, clock)
        self.ingestor = Ingestor(
            self.spool,
            self.series,
            clock=clock,
            min_free_bytes=settings.node.min_free_disk_mb * 1024 * 1024,
        )
        self.scp = StorageSCP(
            settings.node,
            self.ingestor,
            aborted_grace_seconds=settings.completion.aborted_grace_seconds,
            audit=self.dicom_audit,
        )
        self.devices = select_devices(settings.workers.device, settings.workers.devices)
        self.device = self.devices[0]
        # Rules and destinations live in the database (seeded from the YAML on first start).
        self.admin = AdminService(
            self.db,
            self.registry,
            clock=clock,
            calling_ae=settings.node.ae_title,
            device=self.device,
            force_complete=lambda uid: self.completion.force(uid),
            wake=self._wake,
        )
        self.admin.seed_from_config(settings.rules, settings.destinations)
        if any(device.type == "cpu" for device in self.devices):
            threads = settings.workers.cpu_threads or max(1, (os.cpu_count() or 1) - 1)
            torch.set_num_threads(threads)
        self.exporter = Exporter(
            self.queue,
            self.admin.destinations.mapping,
            calling_ae=settings.node.ae_title,
            clock=clock,
            audit=self.dicom_audit,
        )
        self.recovery_probe = RecoveryProbe(
            self.queue,
            self.admin.destinations.mapping,
            calling_ae=settings.node.ae_title,
            clock=clock,
            on_release=self.exporter.wake,
        )
        # One long-lived worker per device; each claims from the shared queue.
        self.workers = [
            InferenceWorker(
                self.queue,
                self.series,
                self.registry,
                device=device,
                results_dir=settings.results_dir,
                templates_dir=settings.templates_dir,
                clock=clock,
                on_results=self.exporter.wake,
                job_timeout_seconds=settings.workers.job_timeout_seconds,
                prefetch=settings.workers.prefetch,
                # The exporter's source too: the database (the YAML only seeds it).
                destinations=self.admin.destinations.mapping,
                rules=lambda: self.admin.rules.active(),
            )
            for device in self.devices
        ]
        self.worker = self.workers[0]
        self.pulls = PullStore(self.db)
        self.dispatcher = Dispatcher(
            self.series,
            self.queue,
            self.admin.rules.active,
            clock=clock,
            on_enqueued=self._wake_workers,
            requested_rule=lambda row: self.pulls.rule_for_completion(
                row.series_uid, row.generation
            ),
        )
        self.completion = CompletionMonitor(
            self.series,
            quiet_seconds=settings.completion.series_quiet_seconds,
            clock=clock,
            on_complete=self.dispatcher.dispatch,
            counted=self.pulls.counted_series,
            max_receiving_seconds=settings.completion.max_receiving_seconds or math.inf,
            max_generations=settings.completion.max_generations_per_hour,
            generation_window=settings.completion.generation_window_seconds,
        )
        self.puller = PullService(
            self.pulls,
            lambda: self.settings.sources,
            self.ingestor,
            self.series,
            node_ae_title=settings.node.ae_title,
            clock=clock,
        )
        self.sender_counts = SenderCountChecker(
            self.pulls,
            lambda: self.settings.sources,
            node_ae_title=settings.node.ae_title,
            clock=clock,
        )
        self._scheduler: BackgroundScheduler | None = None

    def _wake(self) -> None:
        """After an admin job action: let the worker and exporter look at the queue now."""
        self._wake_workers()
        self.exporter.wake()

    def _wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake()

    @property
    def results_dir(self) -> Path:
        return self.settings.results_dir

    def start(self) -> None:
        check_fault_setting()
        self.ingestor.recover()
        # A series still receiving lost its sender with the restart: give the sender's retry
        # the grace period instead of completing a partial series after the quiet period.
        held = self.series.hold_receiving(
            self.clock() + self.settings.completion.aborted_grace_seconds,
            "node restarted before the series completed",
        )
        if held:
            log.warning(
                "series held after restart count=%d grace_seconds=%g series_uids=%s",
                len(held),
                self.settings.completion.aborted_grace_seconds,
                ",".join(held),
            )
        requeued = self.queue.requeue_interrupted(self.clock())
        if requeued:
            log.info("jobs re-queued after restart job_ids=%s", ",".join(map(str, requeued)))
        self.scp.start()
        scheduler = BackgroundScheduler(daemon=True)
        scheduler.add_job(
            self.completion.poll,
            "interval",
            seconds=self.settings.completion.poll_seconds,
            id="series-completion",
            max_instances=1,
            coalesce=True,
        )
        self._schedule_retention(scheduler)
        scheduler.start()
        self._scheduler = scheduler
        for worker in self.workers:
            worker.start()
        self.exporter.start()
        self.recovery_probe.start()
        requeued_pulls = self.pulls.requeue_interrupted(self.clock())
        if requeued_pulls:
            log.info(
                "pulls re-queued after restart pull_ids=%s", ",".join(map(str, requeued_pulls))
            )
        self.puller.start()
        self.sender_counts.start()
        if not self.admin.destinations.mapping() or not any(
            r.send_to for r in self.admin.rules.active()
        ):
            log.info("no destination configured: results stay in %s", self.results_dir.resolve())
        tls = self.settings.node.tls
        log.info(
            "node started ae_title=%s dicom_port=%s dicom_tls_port=%s devices=%s plugins=%s"
            " data_dir=%s",
            self.settings.node.ae_title,
            self.settings.node.dicom_port if self.settings.node.plain_dicom else "off",
            tls.port if tls is not None else "off",
            ",".join(str(d) for d in self.devices),
            ",".join(sorted(self.registry.names)) or "none",
            self.settings.node.data_dir.resolve(),
        )

    def _schedule_retention(self, scheduler: BackgroundScheduler) -> None:
        """Nightly (``retention.schedule``) pass, plus a pass whenever a periodic
        check finds free space below ``retention.high_watermark_mb``."""
        from apscheduler.triggers.cron import CronTrigger

        from node.retention_run import free_bytes, run_pass

        policy = self.settings.retention
        if not policy.enabled:
            return
        data_dir = self.settings.node.data_dir
        one_at_a_time = threading.Lock()

        def retention_pass() -> None:
            with one_at_a_time:
                free = free_bytes(data_dir)
                run_pass(self.db, policy, now=self.clock(), free=free, dry_run=False)

        def watermark_check() -> None:
            if free_bytes(data_dir) < policy.high_watermark_mb * 1024 * 1024:
                retention_pass()

        common = {"max_instances": 1, "coalesce": True}
        scheduler.add_job(
            retention_pass, CronTrigger.from_crontab(policy.schedule), id="retention", **common
        )
        scheduler.add_job(
            watermark_check,
            "interval",
            seconds=policy.watermark_check_seconds,
            id="retention-watermark",
            **common,
        )

    def stop(self) -> None:
        self.puller.stop()
        self.sender_counts.stop()
        self.scp.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for worker in self.workers:
            worker.stop()
        self.recovery_probe.stop()
        self.exporter.stop()
        self.registry.unload_all()
        self.db.close()
        log.info("node stopped")
