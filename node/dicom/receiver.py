"""A receive-only process (``dicom.receiver_processes`` > 1): ``python -m node.dicom.receiver``.

It runs the node's SCP (access control, TLS, audit, group commit, the UPS SOP classes) and
ingest path into the node's state and spool, for the connections the node's listener hands
it over a Unix socket pair (it listens on no port itself), as an ingest node of its own
name (``<node name>/rx<k>``:
``instances.received_by``, its own spool subdirectory, its own start-up recovery).
Completion, dispatch, workers, export and the API stay in the node's main process, which
starts and supervises this one (:mod:`node.dicom.receivers`).

Protocol with the main process: one JSON line on stdin, ``{"name": ..., "settings": {...},
"routines": [...], "channel_fd": n}`` (the ``node``, ``state``, ``completion``, ``dicom``,
``logging``, ``worklist`` and ``sources`` sections; the plugin names; its end of the socket
pair); then JSON lines on stdout, ``{"ready": true}`` once it takes connections and
``{"counts": {...}}`` (the SCP's counters) when they change. Over the socket pair it
receives one record per connection, ``P`` (plain) or ``T`` (TLS port) with the socket's
descriptor, and writes one byte back as each of them closes. The process stops on SIGTERM
or when stdin reaches its end (the main process is gone); SIGINT is left to the main
process, which stops it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from node.config import Settings
from node.dicom.scp import StorageSCP
from node.dicom.ups import EventReportSender, Peer, UpsHandlers, known_peers
from node.orchestration.ingest import Ingestor
from node.orchestration.registry import plugin_names
from node.spool import Spool
from node.state.audit import AuditLog
from node.state.backend import open_database
from node.state.destinations import DestinationStore
from node.state.dicom_audit import DicomAudit
from node.state.rules import RuleStore
from node.state.series import SeriesStore
from node.state.workitems import WorkitemStore
from node.worklist.events import EventBus
from node.worklist.service import WorklistService

log = logging.getLogger("node.dicom.receiver")  # also when run as __main__

#: Seconds between two looks at the counters (sent only when they changed).
REPORT_SECONDS = 0.5


def receiver_settings(settings: Settings, name: str) -> Settings:
    """``settings`` as the receiver process ``name`` sees them: its own identity and its own
    subdirectory of the node's spool (where start-up recovery looks)."""
    node = settings.node.model_copy(update={"name": name, "spool_dir": settings.spool_dir})
    return settings.model_copy(update={"node": node})


def settings_message(settings: Settings, name: str, channel_fd: int = -1) -> str:
    """The first line the main process writes to a receiver process's stdin."""
    sections = ("node", "state", "completion", "dicom", "logging", "worklist", "sources")
    dumped = {key: _dump(getattr(settings, key)) for key in sections}
    # The routines a UPS task may name besides the rules (found without importing any).
    routines = sorted(plugin_names(settings.models))
    message = {"name": name, "settings": dumped, "routines": routines, "channel_fd": channel_fd}
    return json.dumps(message) + "\n"


def _dump(section: Any) -> Any:
    """A section (a model, or a mapping of models such as ``sources``) as JSON."""
    if isinstance(section, dict):
        return {key: _dump(value) for key, value in section.items()}
    return section.model_dump(mode="json")


class Receiver:
    """The SCP and ingest path of one receiver process (no completion, jobs or export).

    It also serves the UPS SOP classes over the shared state, as the main process does:
    an association for the worklist may land on any process. Event reports of the changes
    made here go to their DIMSE subscribers from here (the main process's UPS-RS WebSocket
    channel does not see them), and the main process's performer finds a workitem created
    here at its next look (``worklist.poll_seconds``).

    ``routines``: the plugin names a UPS task may map to besides the rules.
    """

    def __init__(self, settings: Settings, routines: frozenset[str] = frozenset()) -> None:
        self.settings = settings
        self.name = settings.node.identity
        self.db = open_database(settings.state, settings.database_path, check=False)
        self.series = SeriesStore(self.db)
        self.ingestor = Ingestor(
            Spool(settings.spool_dir, settings.spool_subdir),
            self.series,
            clock=time.time,
            min_free_bytes=settings.node.min_free_disk_mb * 1024 * 1024,
            node_name=self.name,
        )
        self.scp = StorageSCP(
            settings.node,
            self.ingestor,
            aborted_grace_seconds=settings.completion.aborted_grace_seconds,
            audit=DicomAudit(self.db, time.time),
            handed=True,
        )
        rules, destinations = RuleStore(self.db), DestinationStore(self.db)
        events = EventBus()

        def peers() -> dict[str, Peer]:
            return known_peers(destinations.mapping(), settings.sources)

        def known_routine(name: str) -> bool:
            return name in routines or any(rule.name == name for rule in rules.active())

        worklist = WorklistService(
            WorkitemStore(self.db),
            AuditLog(self.db),
            events,
            tasks=lambda: settings.worklist.tasks,
            known_routine=known_routine,
            clock=time.time,
        )
        self.scp.serve_ups(UpsHandlers(worklist, peers))
        self.ups_events = EventReportSender(events, peers, calling_ae=settings.node.ae_title)

    def start(self) -> None:
        """Re-record this process's own spool files, hold the series it was receiving
        when it last stopped (as a restarted node does), then listen."""
        self.ingestor.recover()
        held = self.series.hold_receiving(
            time.time() + self.settings.completion.aborted_grace_seconds,
            "receiver process restarted before the series completed",
            received_by=self.name,
        )
        if held:
            log.warning("series held after restart count=%d name=%s", len(held), self.name)
        self.ups_events.start()
        self.scp.start()

    def take_connections(self, channel: socket.socket) -> None:
        """Serve each connection the main process hands over ``channel`` (on this thread)
        until the main process closes its end; one byte back as each one closes."""

        def closed() -> None:
            with contextlib.suppress(OSError):  # the main process is gone
                channel.send(b"c")

        self.scp.report_closes(closed)
        while True:
            try:
                kind, fds, _, _ = socket.recv_fds(channel, 1, 1)
            except OSError:
                return
            if not kind:
                return
            for fd in fds:
                self.scp.take(socket.socket(fileno=fd), kind == b"T")

    def stop(self) -> None:
        self.scp.stop()
        self.ups_events.stop()
        self.db.close()


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    from node.heap import settle as settle_heap
    from node.logs import configure

    spec = json.loads(sys.stdin.readline())
    settings = receiver_settings(Settings.model_validate(spec["settings"]), spec["name"])
    configure(settings.logging.level, settings.logging.format)
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def main_process_gone() -> None:
        while sys.stdin.readline():
            pass
        stop.set()

    try:
        receiver = Receiver(settings, frozenset(spec.get("routines", ())))
    except Exception as exc:  # e.g. the state or the spool cannot be opened
        log.error("receiver process cannot start name=%s error=%s", settings.node.identity, exc)
        return 1
    try:
        receiver.start()
    except Exception as exc:
        log.error("receiver process cannot start name=%s error=%s", receiver.name, exc)
        receiver.stop()
        return 1
    threading.Thread(target=main_process_gone, name="stdin-watch", daemon=True).start()
    channel = socket.socket(fileno=int(spec["channel_fd"]))
    threading.Thread(
        target=receiver.take_connections, args=(channel,), name="handed", daemon=True
    ).start()
    # As the node's own process does once its routines loaded (node.heap): the full
    # collections that would stall receiving walk only what is made from now on.
    frozen = settle_heap()
    log.info(
        "receiver process started name=%s pid=%d frozen_objects=%d",
        receiver.name,
        os.getpid(),
        frozen,
    )
    _send({"ready": True})
    sent: dict[str, int] = {}
    try:
        while not stop.wait(REPORT_SECONDS):
            counts = receiver.scp.own_counts
            if counts != sent:
                with contextlib.suppress(BrokenPipeError):  # the main process is gone
                    _send({"counts": counts})
                sent = counts
    finally:
        receiver.stop()
        with contextlib.suppress(OSError):  # the last counts; the pipe may be gone
            _send({"counts": receiver.scp.own_counts})
        log.info("receiver process stopped name=%s", receiver.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
