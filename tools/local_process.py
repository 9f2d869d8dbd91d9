"""What the development servers share.

:class:`LocalService`: started and stopped by ``with`` (also the base of
:class:`~tools.viewer.server.ViewerServer`). :class:`LocalProcess`: a subprocess
on 127.0.0.1 with a log file, the base of :class:`~tools.node_process.NodeProcess`
and :class:`~tools.orthanc.OrthancServer`.
"""

from __future__ import annotations

import abc
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

from tools.net import LOCALHOST, tail


class LocalService(abc.ABC):
    """Something a test or a demo starts and stops: ``with`` does both."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start and wait until it answers."""

    @abc.abstractmethod
    def stop(self) -> object:
        """Stop and clean up."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class LocalProcess(LocalService):
    """A local subprocess with a log file: ``with`` starts it and stops it.

    Subclasses set :attr:`log_path`, :attr:`_process` and :attr:`_fixed_ports` and
    define how to launch, retry on other ports, terminate and stop.
    """

    log_path: Path
    _process: subprocess.Popen[bytes] | None
    #: Ports given by the caller are never re-picked (one launch attempt).
    _fixed_ports: bool
    #: What :meth:`_launch` raises when the process does not come up.
    _start_error: type[Exception] = Exception

    @abc.abstractmethod
    def _launch(self) -> None:
        """Start the process and wait until it answers; raise :attr:`_start_error` if not."""

    @abc.abstractmethod
    def _retry_on_new_ports(self, error: Exception, attempt: int) -> bool:
        """After a failed launch: pick other ports and return True, or False to give up."""

    @abc.abstractmethod
    def _terminate(self) -> object:
        """Stop the process (if any) and forget it."""

    @abc.abstractmethod
    def stop(self) -> object:
        """Stop the process and clean up after it."""

    def start(self) -> Self:
        """Start the process and wait until it answers (free ports: up to 3 attempts)."""
        if self._process is not None:
            return self
        attempts = 1 if self._fixed_ports else 3
        for attempt in range(1, attempts + 1):
            try:
                self._launch()
                return self
            except self._start_error as exc:
                self._terminate()
                if attempt == attempts or not self._retry_on_new_ports(exc, attempt):
                    raise
        return self

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def log_tail(self, max_bytes: int = 6000) -> str:
        return tail(self.log_path, max_bytes)


__all__ = ["LocalProcess", "LocalService"]
