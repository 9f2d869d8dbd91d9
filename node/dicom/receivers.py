"""The node's receiver processes (``dicom.receiver_processes`` > 1): start, restart, stop.

The main process binds its DICOM port(s) first (``SO_REUSEPORT``), then
:class:`ReceiverProcesses` starts N-1 ``python -m node.dicom.receiver`` processes that bind
the same port(s); Linux spreads incoming associations across all N processes, so
associations no longer share one GIL. A receiver process that exits while the node runs is
started again after a wait (``dicom.receiver_restart_seconds``, doubled after each quick
death up to ``receiver_restart_max_seconds``), logged. On stop each gets SIGTERM, then
SIGKILL after ``stop_timeout``; each also stops by itself when its stdin (a pipe from this
process) closes, so none outlives a main process that was killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

from node.config import Settings
from node.dicom.receiver import settings_message

log = logging.getLogger(__name__)

#: A receiver process that ran this long before exiting restarts after the first wait again.
STEADY_SECONDS = 30.0


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


class ReceiverProcesses:
    """N-1 receive-only processes beside the node's own listener.

    Parameters
    ----------
    settings
        The node's configuration (each process gets its ``node``, ``state``,
        ``completion``, ``dicom`` and ``logging`` sections).
    node_name
        The node's identity; process k (2..N) is named ``<node_name>/rx<k>``.
    stop_timeout
        Seconds a process has to exit after SIGTERM before it is killed.
    """

    def __init__(self, settings: Settings, node_name: str, *, stop_timeout: float = 10.0) -> None:
        self._settings = settings
        dicom = settings.dicom
        self._first_wait = dicom.receiver_restart_seconds
        self._max_wait = dicom.receiver_restart_max_seconds
        self._stop_timeout = stop_timeout
        self._slots = [
            _Slot(f"{node_name}/rx{k}", backoff=self._first_wait)
            for k in range(2, dicom.receiver_processes + 1)
        ]
        self._lock = threading.Lock()
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

    def _spawn(self, slot: _Slot) -> None:
        """Start ``slot``'s process and its stdout reader (called with the lock held)."""
        process = subprocess.Popen(
            [sys.executable, "-m", "node.dicom.receiver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(settings_message(self._settings, slot.name).encode())
            process.stdin.flush()
        except OSError:
            pass  # it died at once: the supervisor sees it exit
        slot.process, slot.started, slot.counts = process, time.monotonic(), {}
        slot.ready.clear()
        slot.reader = threading.Thread(
            target=self._read, args=(slot, process.stdout), name="receiver-reader", daemon=True
        )
        slot.reader.start()
        log.info("receiver process starting name=%s pid=%d", slot.name, process.pid)

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
