"""A receive-only process (``dicom.receiver_processes``): ``python -m node.dicom.receiver``.

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
descriptor, and writes back records (:class:`MainChannel`): a connection closed, an
instance stored, a sender that ended normally, an association refused, a warning logged, a
worklist change. The main process takes each as if it had happened there: its read-ahead
reads the series received here, its counters, console and worklist event reports include
what happened here. The process stops on SIGTERM
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
from collections.abc import Callable, Mapping
from typing import Any

from node.config import Settings
from node.dicom.refusals import forward_refusals
from node.dicom.scp import StorageSCP
from node.dicom.ups import Peer, UpsHandlers, known_peers
from node.logs import RECENT
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
from node.worklist.events import EventBus, UpsEvent
from node.worklist.service import WorklistService

log = logging.getLogger("node.dicom.receiver")  # also when run as __main__

#: Seconds between two looks at the counters (sent only when they changed).
REPORT_SECONDS = 0.5

#: The records a receiver process writes to the main process over its socket pair: the
#: first byte says what happened, the rest (if any) is its subject.
CLOSED = b"c"  # a connection this process served closed (or was dropped)
STORED = b"s"  # + the series UID: an instance of that series is stored
DELIVERED = b"d"  # + JSON {series UID: instances}: the sender of those ended normally
REFUSED = b"r"  # + the reason: an association refused (node.dicom.refusals)
LOGGED = b"w"  # + JSON (time, level, logger, message): a warning or error logged here
UPS_EVENT = b"u"  # + JSON (UpsEvent.as_json): a worklist change made here, to report
WORKITEM_CREATED = b"n"  # a workitem created here: the node's performer looks at once
#: The largest record the main process reads (a larger one is not sent, and logged).
RECORD_MAX = 1 << 18
#: Series per ``DELIVERED`` record.
DELIVERED_SERIES = 256


class MainChannel:
    """The receiver process's end of its socket pair, as the main process reads it
    (:meth:`node.dicom.receivers.ReceiverProcesses.hand_off` the other way round).

    ``closed``, ``refused`` and ``ups_event`` wait for room in the pair: the main process's
    count of open connections, its refusal counters and the worklist's event reports must
    not miss one. ``stored``, ``delivered`` and ``logged`` never make the caller wait: they
    are hints for the main process's read-ahead (a series not read early is read when
    its quiet period ends) and copies of log lines already written to stderr, dropped when
    the pair is full.
    """

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel

    def closed(self) -> None:
        self._send(CLOSED)

    def refused(self, reason: str) -> None:
        self._send(REFUSED + reason.encode("ascii", "replace"))

    def ups_event(self, event: UpsEvent) -> None:
        self._send(UPS_EVENT + json.dumps(event.as_json()).encode())

    def workitem_created(self) -> None:
        self._send(WORKITEM_CREATED)

    def stored(self, series_uid: str) -> None:
        self._send(STORED + series_uid.encode("ascii", "replace"), wait=False)

    def delivered(self, series: Mapping[str, int]) -> None:
        items = list(series.items())
        for start in range(0, len(items), DELIVERED_SERIES):
            chunk = dict(items[start : start + DELIVERED_SERIES])
            self._send(DELIVERED + json.dumps(chunk).encode(), wait=False)

    def logged(self, entry: Mapping[str, Any]) -> None:
        self._send(LOGGED + json.dumps(entry).encode(), wait=False)

    def _send(self, record: bytes, *, wait: bool = True) -> None:
        if len(record) > RECORD_MAX:  # not from the logger: it would report this again
            sys.stderr.write(f"record for the main process too long: {len(record)} bytes\n")
            return
        with contextlib.suppress(OSError):  # full (without wait), or the main process gone
            self._channel.send(record, 0 if wait else socket.MSG_DONTWAIT)


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
    an association for the worklist may land on any process. The main process sends the
    event reports of the changes made here (over DIMSE and its UPS-RS WebSocket channel)
    and its performer looks at a workitem created here at once (:meth:`report_to`).

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
        #: The worklist changes made here, for the main process to report (:meth:`report_to`).
        self.ups_events = EventBus()
        self._on_workitem_created: Callable[[], None] = lambda: None

        def peers() -> dict[str, Peer]:
            return known_peers(destinations.mapping(), settings.sources)

        def known_routine(name: str) -> bool:
            return name in routines or any(rule.name == name for rule in rules.active())

        worklist = WorklistService(
            WorkitemStore(self.db),
            AuditLog(self.db),
            self.ups_events,
            tasks=lambda: settings.worklist.tasks,
            known_routine=known_routine,
            clock=time.time,
            on_created=lambda: self._on_workitem_created(),
        )
        self.scp.serve_ups(UpsHandlers(worklist, peers))

    def report_to(self, main: MainChannel) -> None:
        """Tell the main process what it needs to know: the connections that close (its
        count of open ones), the instances stored and the senders that end (its
        read-ahead), the associations refused (its counters), the warnings and errors
        logged (its console), the worklist changes (it sends their event reports, over
        DIMSE and its UPS-RS WebSocket channel) and the workitems created (its performer)."""
        self.scp.report_closes(main.closed)
        self.ingestor.on_stored = main.stored
        self.ingestor.on_delivered = main.delivered
        forward_refusals(main.refused)
        RECENT.forward = main.logged
        self.ups_events.listen(main.ups_event)
        self._on_workitem_created = main.workitem_created

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
        self.scp.start()

    def take_connections(self, channel: socket.socket) -> None:
        """Serve each connection the main process hands over ``channel`` (on this thread)
        until the main process closes its end."""
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

    channel = socket.socket(fileno=int(spec["channel_fd"]))
    try:
        receiver = Receiver(settings, frozenset(spec.get("routines", ())))
    except Exception as exc:  # e.g. the state or the spool cannot be opened
        log.error("receiver process cannot start name=%s error=%s", settings.node.identity, exc)
        return 1
    receiver.report_to(MainChannel(channel))
    try:
        receiver.start()
    except Exception as exc:
        log.error("receiver process cannot start name=%s error=%s", receiver.name, exc)
        receiver.stop()
        return 1
    threading.Thread(target=main_process_gone, name="stdin-watch", daemon=True).start()
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
