"""The node's receiver processes (``dicom.receiver_processes``): start, restart, stop, and
the spread of associations across them.

The main process listens on the DICOM port(s); :class:`ReceiverProcesses` starts N-1
``python -m node.dicom.receiver`` processes, each with a Unix socket pair to the main
process. The main process hands each connection it accepts to the process with the fewest
open connections, itself included (:meth:`ReceiverProcesses.hand_off`: the socket's
descriptor over the pair; on a tie a receive-only process before the main one, which also
runs the jobs, in turn), so concurrent associations are spread evenly and do not share
one GIL. Each receiver process writes records back over its pair
(:class:`~node.dicom.receiver.MainChannel`): a connection it served closed (its count of
open ones), an instance stored and a sender that ended normally (its read-ahead), an
association refused, a warning logged, a worklist change and a workitem created (its
counters, console, event reports and performer): :meth:`ReceiverProcesses._read_reports`
takes each as if it had happened in the main process.

A receiver process that exits while the node runs is started again after a wait
(``dicom.receiver_restart_seconds``, doubled after each quick death up to
``receiver_restart_max_seconds``), logged. On stop each gets SIGTERM, then SIGKILL after
``stop_timeout``; each also stops by itself when its stdin (a pipe from this process)
closes, so none outlives a main process that was killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO

from node.config import Settings
from node.dicom import receiver as records
from node.dicom.receiver import settings_message
from node.dicom.refusals import association_refused
from node.dicom.scp import MAXIMUM_ASSOCIATIONS
from node.logs import RECENT
from node.worklist.events import UpsEvent

log = logging.getLogger(__name__)

#: A receiver process that ran this long before exiting restarts after the first wait again.
STEADY_SECONDS = 30.0


def _ignore(*args: object) -> None:
    pass


@dataclass
class ReceiverReports:
    """Where the main process puts what its receiver processes report (besides their
    connections closing, their refusals, counted by :mod:`node.dicom.refusals`, and their
    warnings, kept by :data:`node.logs.RECENT`), as if it had happened in the main process.
    """

    #: An instance of this series stored (``Ingestor.stored``: the read-while-arriving).
    stored: Callable[[str], object] = _ignore
    #: A sender ended normally after these series (``Ingestor.delivered``: the read-ahead).
    delivered: Callable[[Mapping[str, int]], object] = _ignore
    #: A worklist change to report (the node's worklist event bus).
    ups_event: Callable[[UpsEvent], object] = _ignore
    #: A workitem created (the node's worklist performer looks at once).
    workitem_created: Callable[[], object] = _ignore


@dataclass
class _Slot:
    """One receiver process's place: its name, the current process and its counters."""

    name: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    #: The running process's counters, and those of its dead predecessors.
    counts: dict[str, int] = field(default_factory=dict)
    retired: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    backoff: float = 0.0
    next_start: float = 0.0
    reader: threading.Thread | None = None
    #: The main process's end of the socket pair (None while no process runs).
    channel: socket.socket | None = None
    #: Connections handed to the running process and not yet closed.
    open: int = 0


class ReceiverProcesses:
    """N-1 receive-only processes beside the node's own listener.

    Parameters
    ----------
    settings
        The node's configuration (each process gets its ``node``, ``state``,
        ``completion``, ``dicom`` and ``logging`` sections).
    node_name
        The node's identity; process k (2..N) is named ``<node_name>/rx<k>``.
    reports
        Where the receiver processes' reports go (:class:`ReceiverReports`).
    stop_timeout
        Seconds a process has to exit after SIGTERM before it is killed.
    """

    def __init__(
        self,
        settings: Settings,
        node_name: str,
        *,
        reports: ReceiverReports | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self._settings = settings
        self._reports = reports or ReceiverReports()
        dicom = settings.dicom
        self._first_wait = dicom.receiver_restart_seconds
        self._max_wait = dicom.receiver_restart_max_seconds
        self._stop_timeout = stop_timeout
        self._slots = [
            _Slot(f"{node_name}/rx{k}", backoff=self._first_wait)
            for k in range(2, settings.receiver_process_count + 1)
        ]
        self._lock = threading.Lock()
        #: Guards the open-connection counts and the channels (:meth:`hand_off`).
        self._spread = threading.Lock()
        self._own_open = 0  # connections served by the main process
        self._last = 0  # the receive-only process chosen last (1..N-1), for ties
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def names(self) -> list[str]:
        return [slot.name for slot in self._slots]

    def start(self) -> None:
        """Start every process (the node's own listener must be bound already)."""
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._supervisor = threading.Thread(
            target=self._supervise, name="receiver-supervisor", daemon=True
        )
        self._supervisor.start()

    def wait_ready(self, timeout: float) -> bool:
        """Whether every process is listening within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        return all(slot.ready.wait(max(0.0, deadline - time.monotonic())) for slot in self._slots)

    def pids(self) -> dict[str, int | None]:
        """Each process's name and pid (None while it waits to be restarted)."""
        with self._lock:
            return {
                slot.name: slot.process.pid
                if slot.process is not None and slot.process.poll() is None
                else None
                for slot in self._slots
            }

    def counts(self) -> dict[str, int]:
        """The SCP counters of every receiver process since the node started (a restarted
        process's predecessors included, so the sum never goes down)."""
        total: Counter[str] = Counter()
        with self._lock:
            for slot in self._slots:
                total.update(slot.retired)
                total.update(slot.counts)
        return dict(total)

    def hand_off(self, client: socket.socket, tls: bool) -> bool:
        """Give ``client`` (just accepted, TLS not yet negotiated) to the process with the
        fewest open connections; False when that is the main process (serve it here).

        On a tie a receive-only process goes before the main process, whose interpreter
        lock the jobs share (completion, reading, encoding, export, the API); the
        receive-only ones take ties in turn.
        """
        with self._spread:
            if self._open_over_all() >= MAXIMUM_ASSOCIATIONS:  # the main process rejects it
                self._own_open += 1
                return False
            ready = [
                (slot.open, k, slot)
                for k, slot in enumerate(self._slots, start=1)
                if slot.channel is not None and slot.ready.is_set()
            ]
            turns = len(self._slots) + 1
            candidates = [(self._own_open, 0, None), *ready]
            _, chosen, slot = min(
                candidates, key=lambda c: (c[0], c[1] == 0, (c[1] - self._last - 1) % turns)
            )
            if slot is not None and slot.channel is not None:
                self._last = chosen
                try:
                    socket.send_fds(slot.channel, [b"T" if tls else b"P"], [client.fileno()])
                except OSError as exc:  # it is going away: serve the connection here
                    log.warning("connection not handed name=%s error=%s", slot.name, exc)
                else:
                    slot.open += 1
                    return True
            self._own_open += 1
            return False

    def open_over_all(self) -> int:
        """Open connections of every receiving process, the main one's included."""
        with self._spread:
            return self._open_over_all()

    def _open_over_all(self) -> int:  # with self._spread held
        return self._own_open + sum(slot.open for slot in self._slots)

    def own_closed(self) -> None:
        """A connection the main process served closed (or was dropped)."""
        with self._spread:
            self._own_open = max(0, self._own_open - 1)

    def open_connections(self) -> dict[str, int]:
        """Open connections per receiver process, as the main process counts them."""
        with self._spread:
            return {slot.name: slot.open for slot in self._slots}

    def own_open(self) -> int:
        """Open connections the main process serves."""
        with self._spread:
            return self._own_open

    def _spawn(self, slot: _Slot) -> None:
        """Start ``slot``'s process, its socket pair and readers (called with the lock held)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.settimeout(2.0)  # a hand-off never waits long on a process that stopped reading
        child_fd = theirs.fileno()  # the same number in the child (pass_fds)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "node.dicom.receiver"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        assert process.stdin is not None and process.stdout is not None
        message = settings_message(self._settings, slot.name, channel_fd=child_fd)
        try:
            process.stdin.write(message.encode())
            process.stdin.flush()
        except OSError:
            pass  # it died at once: the supervisor sees it exit
        slot.process, slot.started, slot.counts = process, time.monotonic(), {}
        slot.ready.clear()
        with self._spread:
            slot.channel, slot.open = ours, 0
        slot.reader = threading.Thread(
            target=self._read, args=(slot, process.stdout), name="receiver-reader", daemon=True
        )
        slot.reader.start()
        threading.Thread(
            target=self._read_reports, args=(slot, ours), name="receiver-reports", daemon=True
        ).start()
        log.info("receiver process starting name=%s pid=%d", slot.name, process.pid)

    def _read_reports(self, slot: _Slot, channel: socket.socket) -> None:
        """Take ``slot``'s process's records (:class:`~node.dicom.receiver.MainChannel`)
        until the process is gone (the pair's end)."""
        buffer = bytearray(records.RECORD_MAX)
        while True:
            try:
                size = channel.recv_into(buffer)
            except TimeoutError:
                continue
            except OSError:
                size = 0
            if not size:
                break
            kind, subject = buffer[:1], bytes(buffer[1:size])
            if kind == records.CLOSED:
                with self._spread:
                    if slot.channel is channel:
                        slot.open = max(0, slot.open - 1)
                continue
            try:
                self._report(kind, subject)
            except Exception as exc:  # a report must not end the reading of the next ones
                log.warning("receiver report not taken name=%s error=%s", slot.name, exc)
        with self._spread:
            if slot.channel is channel:
                slot.channel, slot.open = None, 0
        channel.close()

    def _report(self, kind: bytes | bytearray, subject: bytes) -> None:
        """One record other than a connection closed (see :class:`ReceiverReports`)."""
        reports = self._reports
        if kind == records.STORED:
            reports.stored(subject.decode("ascii"))
        elif kind == records.DELIVERED:
            series = json.loads(subject)
            reports.delivered({str(uid): int(n) for uid, n in series.items()})
        elif kind == records.REFUSED:
            association_refused(subject.decode("ascii"))
        elif kind == records.LOGGED:
            RECENT.add(json.loads(subject))
        elif kind == records.UPS_EVENT:
            reports.ups_event(UpsEvent.from_json(json.loads(subject)))
        elif kind == records.WORKITEM_CREATED:
            reports.workitem_created()
        else:
            raise ValueError(f"unknown record {bytes(kind)!r}")

    def _read(self, slot: _Slot, stdout: IO[bytes]) -> None:
        """Take ``ready`` and ``counts`` messages from one process until it closes stdout."""
        for line in stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("ready"):
                slot.ready.set()
            counts = message.get("counts")
            if isinstance(counts, dict):  # one assignment: no lock (see _retire)
                slot.counts = {str(k): int(v) for k, v in counts.items()}
        stdout.close()

    def _supervise(self) -> None:
        """Restart a process that exited, after its backoff wait."""
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                for slot in self._slots:
                    if slot.process is None:
                        if now >= slot.next_start:
                            slot.restarts += 1
                            self._spawn(slot)
                        continue
                    code = slot.process.poll()
                    if code is None:
                        continue
                    self._retire(slot)
                    ran = now - slot.started
                    quick_again = ran < STEADY_SECONDS and slot.restarts > 0
                    slot.backoff = (
                        min(self._max_wait, slot.backoff * 2) if quick_again else self._first_wait
                    )
                    slot.next_start = now + slot.backoff
                    log.warning(
                        "receiver process exited name=%s exit_code=%s ran_seconds=%.1f"
                        " restart_in_seconds=%.1f",
                        slot.name,
                        code,
                        ran,
                        slot.backoff,
                    )

    def _retire(self, slot: _Slot) -> None:
        """Forget ``slot``'s exited process, keeping its counters (lock held)."""
        process, slot.process = slot.process, None
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        if slot.reader is not None:
            slot.reader.join(timeout=1.0)  # its last counts line
        slot.retired.update(slot.counts)
        slot.counts = {}

    def stop(self) -> None:
        """SIGTERM every process, SIGKILL those still running after ``stop_timeout``."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        with self._lock:
            running = [slot.process for slot in self._slots if slot.process is not None]
        for process in running:
            with contextlib.suppress(OSError):
                process.terminate()
        deadline = time.monotonic() + self._stop_timeout
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("receiver process killed after SIGTERM pid=%d", process.pid)
                process.kill()
                process.wait()
        with self._lock:
            for slot in self._slots:
                self._retire(slot)
        log.info("receiver processes stopped count=%d", len(running))
