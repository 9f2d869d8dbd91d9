"""Wiring: one :class:`Node` owns every box and starts/stops them in order.

Start order: state → DICOM listener → completion timer → exporter, then the routines
(plugins, torch, MONAI) and workers. Stop is the reverse, so nothing new is accepted
while work in flight finishes.

With ``load_routines="background"`` (``ainode serve``) the routines are imported and the
workers made in a thread that :meth:`Node.start` starts last, so the DICOM listener and
the HTTP API answer within a second; until the routines are loaded ``/readyz`` says
``routines loading`` and due jobs wait in the queue.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from apscheduler.schedulers.background import BackgroundScheduler

from node.admin.service import AdminService
from node.config import RuleSettings, Settings, check_plugins_known
from node.contract.plugin import ValidatedInput
from node.dicom.receivers import ReceiverProcesses, ReceiverReports
from node.dicom.scp import StorageSCP
from node.dicom.ups import EventReportSender, Peer, UpsHandlers, known_peers
from node.errors import PluginError
from node.export.exporter import Exporter, RecoveryProbe
from node.faults import check_fault_setting, delay_point
from node.orchestration.completion import CompletionLoop, CompletionMonitor
from node.orchestration.dispatch import Dispatcher
from node.orchestration.ingest import Ingestor
from node.orchestration.registry import PluginRegistry, plugin_names, select_devices
from node.pull.service import PullService, SenderCountChecker
from node.pull.worklist import RemoteWorklistPerformer
from node.spool import Spool
from node.state.backend import open_database
from node.state.dicom_audit import DicomAudit
from node.state.jobs import JobQueue
from node.state.performed import PerformedStore
from node.state.pulls import PullStore
from node.state.series import SeriesRow, SeriesStore
from node.state.workitems import WorkitemStore
from node.worklist.events import EventBus
from node.worklist.performer import WorklistPerformer
from node.worklist.service import WorklistService

if TYPE_CHECKING:
    import torch

    from node.orchestration.ray_executor import RayExecutor
    from node.orchestration.read_ahead import QuietReads
    from node.orchestration.worker import InferenceWorker

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
        load_routines: Literal["now", "background"] = "now",
    ) -> None:
        self.settings = settings
        self.clock = clock
        #: Set once the routines are imported and the workers made (see :meth:`start`).
        self.routines_loaded = threading.Event()
        #: Why the routines could not be loaded (then no job runs), else None.
        self.routines_problem: str | None = None
        self._loader: threading.Thread | None = None
        self._stopping = False
        background = registry is None and load_routines == "background"
        if registry is None:
            registry = PluginRegistry(settings.workers.gpu_memory_budget_mb)
            if not background:
                registry.load(settings.models, settings.templates_dir)
        self.registry = registry
        known = plugin_names(settings.models) if background else registry.known_names()
        check_plugins_known(settings, known, source=source)
        data_dir = settings.node.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        # SQLite refuses to start on a damaged file (check_integrity); or PostgreSQL.
        self.db = open_database(settings.state, settings.database_path)
        #: This node's identity among the nodes sharing the state (``node.name``).
        self.name = settings.node.identity
        self.series = SeriesStore(self.db)
        self.queue = JobQueue(self.db, lease_seconds=settings.workers.lease_seconds)
        self.spool = Spool(settings.spool_dir, settings.spool_subdir)
        self.dicom_audit = DicomAudit(self.db, clock)
        self.ingestor = Ingestor(
            self.spool,
            self.series,
            clock=clock,
            min_free_bytes=settings.node.min_free_disk_mb * 1024 * 1024,
            node_name=self.name,
        )
        several = settings.receiver_process_count > 1
        self.scp = StorageSCP(
            settings.node,
            self.ingestor,
            aborted_grace_seconds=settings.completion.aborted_grace_seconds,
            audit=self.dicom_audit,
        )
        #: The receive-only processes the listener hands connections to
        #: (``dicom.receiver_processes``).
        # What they report is taken as if it happened here (the worklist is made below).
        reports = ReceiverReports(
            stored=self.ingestor.stored,
            delivered=self.ingestor.delivered,
            ups_event=lambda event: self.worklist_events.publish(event),
            workitem_created=lambda: self.worklist_performer.wake(),
        )
        self.receivers = (
            ReceiverProcesses(settings, self.name, reports=reports) if several else None
        )
        if self.receivers is not None:
            self.scp.add_counts(self.receivers.counts)
        #: One per device, made with the routines (:meth:`_make_workers`).
        self.devices: list[torch.device] = []
        self.workers: list[InferenceWorker] = []
        #: The Ray executor (``executor.kind: ray``), made with the workers.
        self.remote_executor: RayExecutor | None = None
        #: Series read during their quiet period (local executor, ``workers.read_ahead_mb``).
        self.quiet_reads: QuietReads | None = None
        #: Instances stored per series lately (``workers.read_while_arriving``).
        self._arriving_counts: OrderedDict[str, int] = OrderedDict()
        self._arriving_lock = threading.Lock()
        # Rules and destinations live in the database (seeded from the YAML on first start).
        self.admin = AdminService(
            self.db,
            self.registry,
            clock=clock,
            calling_ae=settings.node.ae_title,
            device=None,  # set by _make_workers
            force_complete=lambda uid: self.completion.force(uid),
            wake=self._wake,
        )
        self.admin.seed_from_config(settings.rules, settings.destinations)
        self.exporter = Exporter(
            self.queue,
            self.admin.destinations.mapping,
            calling_ae=settings.node.ae_title,
            clock=clock,
            audit=self.dicom_audit,
            node_name=self.name,
        )
        self.recovery_probe = RecoveryProbe(
            self.queue,
            self.admin.destinations.mapping,
            calling_ae=settings.node.ae_title,
            clock=clock,
            on_release=self.exporter.wake,
        )
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
            on_quieting=self._read_quiet if settings.workers.read_ahead_mb > 0 else None,
        )
        self.completion_loop = CompletionLoop(
            self.completion, poll_seconds=settings.completion.poll_seconds, clock=clock
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
        self.worklist_events = EventBus()
        self.worklist = WorklistService(
            WorkitemStore(self.db),
            self.admin.audit,
            self.worklist_events,
            tasks=lambda: self.settings.worklist.tasks,
            known_routine=self._known_routine,
            clock=clock,
            on_created=lambda: self.worklist_performer.wake(),
        )
        self.worklist_performer = WorklistPerformer(
            self.worklist,
            self.queue,
            self.series,
            self.pulls,
            submit_pull=lambda source, study, series, rule, origin: (
                self.puller.submit(
                    source=source, study_uid=study, series_uid=series, rule=rule, origin=origin
                ).id
            ),
            sources=lambda: self.settings.sources,
            rules=self.admin.rules.active,
            destinations=self.admin.destinations.mapping,
            clock=clock,
            on_enqueued=self._wake_workers,
        )
        self.worklist_performer.idle_seconds = settings.worklist.poll_seconds
        # The same workitems over DIMSE (UPS Push/Pull/Watch), event reports by N-EVENT-REPORT.
        self.scp.serve_ups(UpsHandlers(self.worklist, self._ups_peers))
        self.ups_events = EventReportSender(
            self.worklist_events, self._ups_peers, calling_ae=settings.node.ae_title
        )
        #: The node as a UPS performer for the sources with a ``worklist`` section.
        self.remote_performer = RemoteWorklistPerformer(
            PerformedStore(self.db),
            lambda: self.settings.sources,
            self.puller,
            self.pulls,
            self.queue,
            self.series,
            lambda: self.admin.rules.active(),
            self.admin.destinations.mapping,
            default_tasks=lambda: self.settings.worklist.tasks,
            node_ae_title=settings.node.ae_title,
            clock=clock,
            on_enqueued=self._wake_workers,
        )
        self._scheduler: BackgroundScheduler | None = None
        self._life = threading.Lock()  # orders a late loader against stop()
        if not background:
            self._make_workers()
            self.routines_loaded.set()

    @property
    def device(self) -> torch.device | None:
        """The first worker's device; None while the routines load."""
        return self.devices[0] if self.devices else None

    @property
    def worker(self) -> InferenceWorker:
        """The first worker (the only one on a single-device node)."""
        if not self.workers:
            raise RuntimeError("the routines are not loaded yet: no worker")
        return self.workers[0]

    def _make_workers(self) -> None:
        """Devices, torch's CPU threads and one long-lived worker per device (each claims
        from the shared queue); imports torch and the routines' result code."""
        import torch

        from node.orchestration.worker import InferenceWorker

        settings = self.settings
        devices = select_devices(settings.workers.device, settings.workers.devices)
        if any(device.type == "cpu" for device in devices):
            threads = settings.workers.cpu_threads or max(1, (os.cpu_count() or 1) - 1)
            torch.set_num_threads(threads)
        if settings.executor.kind == "ray":
            self.workers = [self._ray_worker()]
            self.devices = [self.workers[0].device]
            self.admin.device = self.devices[0]
            self.admin.worker_devices = [f"ray:{settings.executor.address}"]
            return
        from node.orchestration.completion import READ_AHEAD_FRACTION
        from node.orchestration.read_ahead import QuietReads

        quiet = settings.completion.series_quiet_seconds
        if settings.workers.read_ahead_mb > 0:
            # Dropped unless a job takes it within the rest of the quiet period and 30 s.
            self.quiet_reads = QuietReads(
                settings.workers.read_ahead_mb << 20,
                keep_seconds=quiet * (1 - READ_AHEAD_FRACTION) + 30.0,
            )
            self.ingestor.on_delivered = self._read_delivered
            if settings.workers.read_while_arriving:
                self.ingestor.on_stored = self._read_arriving
        self.workers = [
            InferenceWorker(
                self.queue,
                self.series,
                self.registry,
                device=device,
                results_dir=settings.results_dir,
                templates_dir=settings.templates_dir,
                clock=self.clock,
                on_results=self.exporter.wake,
                job_timeout_seconds=settings.workers.job_timeout_seconds,
                prefetch=settings.workers.prefetch,
                # The exporter's source too: the database (the YAML only seeds it).
                destinations=self.admin.destinations.mapping,
                rules=lambda: self.admin.rules.active(),
                node_name=self.name,
                quiet_reads=self.quiet_reads,
            )
            for device in devices
        ]
        self.devices = devices
        self.admin.device = devices[0]
        self.admin.worker_devices = [str(device) for device in devices]

    def _read_quiet(self, rows: list[SeriesRow]) -> None:
        """Read ahead the first quiet series (nearest deadline) some rule routes to a job."""
        self._read_first(rows, "quiet")

    def receiving(self) -> dict[str, Any]:
        """The processes receiving on the DICOM port(s) and, with receiver processes, the
        connections each serves now (``/healthz``'s ``receiving``)."""
        if self.receivers is None:
            return {"processes": 1}
        return {
            "processes": 1 + len(self.receivers.names),
            "open_connections": {
                self.name: self.receivers.own_open(),
                **self.receivers.open_connections(),
            },
        }

    def _read_delivered(self, carried: Mapping[str, int]) -> None:
        """Read ahead, as soon as its association (or STOW-RS request) ended normally, a
        series it delivered whole (every instance of the series so far came over it): its
        sender has said it is done, so the read need not wait for a quarter of the quiet
        period.

        A series delivered over several associations (one per instance, or in parallel)
        waits for the quiet period as before: each ended association would start a read
        of a part of it.
        """
        whole = []
        for series_uid, count in carried.items():
            row = self.series.series(series_uid)
            if row is not None and row.state == "receiving" and row.instance_count == count:
                whole.append(row)
        self._read_first(whole, "delivered")

    def _read_arriving(self, series_uid: str) -> None:
        """Count an instance stored; every ``arriving_batch`` of a series, have the
        read-ahead read its new files (on its thread: this is the receiving one)."""
        reads = self.quiet_reads
        if reads is None:
            return
        with self._arriving_lock:
            stored = self._arriving_counts.pop(series_uid, 0) + 1
            self._arriving_counts[series_uid] = stored  # the most recent last
            while len(self._arriving_counts) > 64:
                self._arriving_counts.popitem(last=False)
        if stored % reads.arriving_batch == 0:
            reads.arriving(series_uid, lambda: self._arriving_files(series_uid))

    def _arriving_files(self, series_uid: str) -> tuple[list[Path], list[ValidatedInput]] | None:
        """A series' files so far and its routines' validated inputs, while it is still
        receiving and some rule routes it (else None)."""
        row = self.series.series(series_uid)
        if row is None or row.state != "receiving":
            return None
        rules = self.dispatcher.routes(row)
        if not rules:
            return None
        return self.series.instance_paths(series_uid), self._validated_inputs(rules)

    def _read_first(self, rows: list[SeriesRow], trigger: str) -> None:
        """Offer ``rows`` in order to the read-ahead until one is routed (one read at a
        time); ``trigger`` names why in its log line."""
        reads = self.quiet_reads
        if reads is None:  # the Ray executor, or the workers not made yet
            return
        reads.expire()
        for row in rows:
            if self._offer_read(reads, row, trigger) is not None:
                return

    def _offer_read(self, reads: QuietReads, row: SeriesRow, trigger: str) -> bool | None:
        """Offer ``row``'s series to ``reads`` if a rule routes it: whether the read
        started, or None when no rule routes it (the next series may be read)."""
        paths = tuple(self.series.instance_paths(row.series_uid))
        if reads.holds(paths):
            return False
        rules = self.dispatcher.routes(row)
        if not rules:
            return None
        return reads.offer(row.series_uid, paths, self._validated_inputs(rules), trigger=trigger)

    def _validated_inputs(self, rules: Sequence[RuleSettings]) -> list[ValidatedInput]:
        """What the routines of ``rules`` were validated on (their input-quality gates)."""
        inputs = []
        for rule in rules:
            try:
                validated = self.registry.plugin_info(rule.plugin).validated_on
            except PluginError:  # the job will say so
                continue
            if validated is not None:
                inputs.append(validated)
        return inputs

    def _ray_worker(self) -> InferenceWorker:
        """One worker keeping jobs on the Ray cluster's actors (``executor.kind: ray``)."""
        import torch

        from node.orchestration.ray_executor import RayExecutor
        from node.orchestration.worker import PipelinedWorker

        settings = self.settings
        executor = RayExecutor(
            settings.executor,
            models=settings.models,
            templates_dir=settings.templates_dir,
            resources=lambda name: self.registry.plugin_info(name).resources,
            gpu_memory_budget_mb=settings.workers.gpu_memory_budget_mb,
            job_timeout_seconds=settings.workers.job_timeout_seconds,
            on_event=lambda job_id, code, detail: self.queue.add_event(
                job_id, self.clock(), code, detail
            ),
        )
        self.remote_executor = executor
        self.admin.executor_actors = executor.actors
        return PipelinedWorker(
            self.queue,
            self.series,
            self.registry,
            executor=executor,
            device=torch.device("cpu"),  # names the worker; each actor picks its own device
            results_dir=settings.results_dir,
            templates_dir=settings.templates_dir,
            clock=self.clock,
            on_results=self.exporter.wake,
            job_timeout_seconds=settings.workers.job_timeout_seconds,
            prefetch=False,  # the actors read their own inputs
            destinations=self.admin.destinations.mapping,
            rules=lambda: self.admin.rules.active(),
        )

    def _load_routines(self) -> None:
        """The background start: import the plugins, make and start the workers."""
        started = time.monotonic()
        try:
            delay_point("routines_loading")
            self.registry.load(self.settings.models, self.settings.templates_dir)
            # Imported here: the start path imports no highdicom (tests/test_startup.py).
            from node.contract.template import warm_templates
            from node.results.seg.iod import warm as warm_result_builders

            warm_result_builders()  # else the first job's results wait ~0.6 s for it
            templates = [info.template for info in self.registry.info() if info.template]
            for name, problem in warm_templates(templates, self.settings.templates_dir).items():
                log.warning("result template does not load template=%s problem=%s", name, problem)
            self._make_workers()
        except Exception as exc:
            self.routines_problem = f"routines failed to load: {type(exc).__name__}: {exc}"
            log.exception("routines failed to load")
            return
        for name in sorted({rule.plugin for rule in self.admin.rules.active()}):
            if name not in self.registry.known_names():
                log.error("rule names a plugin that did not load plugin=%s", name)
        with self._life:
            if self._stopping:
                return
            for worker in self.workers:
                worker.start()
            self.routines_loaded.set()
        log.info(
            "routines loaded seconds=%.2f devices=%s plugins=%s",
            time.monotonic() - started,
            ",".join(str(d) for d in self.devices),
            ",".join(sorted(self.registry.names)) or "none",
        )

    def _known_routine(self, name: str) -> bool:
        """A rule name, or a plugin this node has (or will have once routines load)."""
        if any(rule.name == name for rule in self.admin.rules.active()):
            return True
        return name in (self.registry.known_names() | plugin_names(self.settings.models))

    def _ups_peers(self) -> dict[str, Peer]:
        """AE titles a UPS subscriber may have: the DIMSE destinations and sources."""
        return known_peers(self.admin.destinations.mapping(), self.settings.sources)

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

    def start(self, *, defer_routines: bool = False) -> None:
        """Start every box; with the routines still to load (``load_routines="background"``)
        also :meth:`start_routines`, unless ``defer_routines`` (the caller does it later,
        e.g. once the HTTP server listens: the import would slow the server's start)."""
        check_fault_setting()
        self.ingestor.recover()
        # A series still receiving lost its sender with the restart: give the sender's retry
        # the grace period instead of completing a partial series after the quiet period.
        # The receiver processes restarted with this one: their series too, before the
        # completion below runs (each holds its own again once it has started).
        held = self.series.hold_receiving(
            self.clock() + self.settings.completion.aborted_grace_seconds,
            "node restarted before the series completed",
            received_by=[self.name, *(self.receivers.names if self.receivers else [])],
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
        self.ups_events.start()
        self.scp.start()
        if self.receivers is not None:  # the listener above hands them connections
            self.receivers.start()
            self.scp.report_closes(self.receivers.own_closed)
            self.scp.hand_off_with(self.receivers.hand_off)
            self.scp.limit_over_all(self.receivers.open_over_all)
        self.completion_loop.start()
        scheduler = BackgroundScheduler(daemon=True)
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
        if self.settings.worklist.perform:
            self.worklist_performer.start()
        self.remote_performer.start()
        if not self.admin.destinations.mapping() or not any(
            r.send_to for r in self.admin.rules.active()
        ):
            log.info("no destination configured: results stay in %s", self.results_dir.resolve())
        tls = self.settings.node.tls
        log.info(
            "node started ae_title=%s dicom_port=%s dicom_tls_port=%s receiver_processes=%d"
            " devices=%s plugins=%s data_dir=%s",
            self.settings.node.ae_title,
            self.settings.node.dicom_port if self.settings.node.plain_dicom else "off",
            tls.port if tls is not None else "off",
            self.settings.receiver_process_count,
            ",".join(str(d) for d in self.devices) or "loading",
            ",".join(sorted(self.registry.names))
            or ("none" if self.routines_loaded.is_set() else "loading"),
            self.settings.node.data_dir.resolve(),
        )
        if not defer_routines:
            self.start_routines()

    def start_routines(self) -> None:
        """Import the routines and start the workers in a background thread (once; a no-op
        when they are loaded already)."""
        with self._life:
            if self.routines_loaded.is_set() or self._loader is not None or self._stopping:
                return
            self._loader = threading.Thread(
                target=self._load_routines, name="routines-loader", daemon=True
            )
            self._loader.start()

    def _schedule_retention(self, scheduler: BackgroundScheduler) -> None:
        """Nightly (``retention.schedule``) pass, plus a pass whenever a periodic
        check finds free space below ``retention.high_watermark_mb``."""
        from apscheduler.triggers.cron import CronTrigger

        from node.orchestration.retention_run import free_bytes, run_pass

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
        with self._life:
            self._stopping = True  # a loader still running starts no worker
        self.worklist_performer.stop()
        self.remote_performer.stop()
        self.puller.stop()
        self.sender_counts.stop()
        if self.receivers is not None:
            self.receivers.stop()
        self.scp.stop()
        self.ups_events.stop()
        self.completion_loop.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for worker in self.workers:
            worker.stop()
        if self.remote_executor is not None:
            self.remote_executor.shutdown()
        if self.quiet_reads is not None:
            self.quiet_reads.shutdown()
        self.recovery_probe.stop()
        self.exporter.stop()
        self.registry.unload_all()
        self.db.close()
        log.info("node stopped")
