"""dcmtk's storescu and storescp as tests use them: send files to a node, receive its results."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tools.net import LOCALHOST, port_is_free, wait_until


def storescu(
    port: int,
    files: Sequence[Path],
    calling_ae: str | None = "CT_SCANNER",
    *,
    called_ae: str = "AINODE",
    timeout: float = 120,
) -> None:
    """C-STORE ``files`` to ``port`` with dcmtk's storescu and assert that it succeeded.

    ``calling_ae=None`` leaves storescu's own calling AE title (``STORESCU``).
    """
    aet = ["-aet", calling_ae] if calling_ae is not None else []
    result = subprocess.run(
        ["storescu", *aet, "-aec", called_ae, LOCALHOST, str(port), *map(str, files)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr


class StoreSCP:
    """dcmtk storescp on ``port`` as ``ae_title``, writing what it receives into ``directory``."""

    def __init__(self, port: int, directory: Path, ae_title: str = "PACS") -> None:
        self.port, self.directory = port, directory
        directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "-aet", ae_title, "-od", str(directory), str(port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: not port_is_free(port), 10, message="storescp listening")

    def received(self) -> list[Path]:
        return sorted(self.directory.iterdir())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
