"""A daemon thread that repeats one unit of work, sleeping only when there was none."""

from __future__ import annotations

import abc
import logging
import threading

log = logging.getLogger(__name__)


class PollingThread(abc.ABC):
    """Calls :meth:`run_once` until stopped; waits ``idle_seconds`` or a :meth:`wake`."""

    idle_seconds = 0.5

    def __init__(self, name: str) -> None:
        self._name = name
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def run_once(self) -> bool:
        """Do one unit of work; return False when there was nothing to do."""

    def next_wait(self) -> float:
        """Seconds to wait after an idle :meth:`run_once` (``idle_seconds`` unless overridden)."""
        return self.idle_seconds

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        """True while the thread is alive (for ``/readyz``)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("loop error thread=%s", self._name)
                busy = False
            if not busy:
                self._wake.wait(self.next_wait())
                self._wake.clear()
