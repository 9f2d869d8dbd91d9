"""What the development process managers share: a subprocess on 127.0.0.1 with a log file.

Base of :class:`~node.devtools.node_process.NodeProcess` and
:class:`~node.devtools.orthanc.OrthancServer`, both used as context managers.
"""

from __future__ import annotations

import abc
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

from node.devtools.net import LOCALHOST, tail


class LocalProcess(abc.ABC):
    """A local subprocess with a log file: ``with`` starts it and stops it.

    Subclasses set :attr:`log_path` and :attr:`_process` and define :meth:`start`
    (return ``self`` once the process answers) and :meth:`stop`.
    """

    log_path: Path
    _process: subprocess.Popen[bytes] | None

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the process and wait until it answers."""

    @abc.abstractmethod
    def stop(self) -> object:
        """Stop the process and clean up after it."""

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def log_tail(self, max_bytes: int = 6000) -> str:
        return tail(self.log_path, max_bytes)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["LocalProcess"]
