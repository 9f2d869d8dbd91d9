"""Small helpers for development tools: free local ports, polling, log tails.

Used by the Orthanc and node process managers, the demo, benchmarks and tests.
Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")

LOCALHOST = "127.0.0.1"


#: Under pytest-xdist, worker ``gwN`` takes ports from its own block of this many, starting
#: at ``WORKER_PORT_BASE + N * WORKER_PORT_BLOCK``: below the kernel's ephemeral range
#: (32768-60999), so neither another worker nor an outgoing connection's local port can
#: take a port between the test picking it and the server binding it; above Ray's default
#: worker ports (10002-19999). ``AINODE_TEST_PORT_BASE`` moves the blocks (two xdist runs
#: on one machine).
WORKER_PORT_BASE = 20000
WORKER_PORT_BLOCK = 400
_cursor_lock = threading.Lock()
_cursors: dict[range, int] = {}


def worker_port_block(environ: dict[str, str] | None = None) -> range | None:
    """This pytest-xdist worker's port block, or None outside xdist (``PYTEST_XDIST_WORKER``)."""
    environ = dict(os.environ) if environ is None else environ
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not worker[2:].isdigit():
        return None
    base = int(environ.get("AINODE_TEST_PORT_BASE", WORKER_PORT_BASE))
    start = base + int(worker[2:]) * WORKER_PORT_BLOCK
    return range(start, start + WORKER_PORT_BLOCK)


def _ports_from_block(block: range, count: int, host: str) -> list[int]:
    """``count`` distinct ports of ``block`` that bind now, walking on from where the last
    call stopped (a random place in a new process, e.g. a subprocess of the same worker)."""
    picked: list[int] = []
    with _cursor_lock:
        cursor = _cursors.get(block, random.randrange(len(block)))
        for _ in range(len(block)):
            port = block[cursor]
            cursor = (cursor + 1) % len(block)
            if port_is_free(port, host):
                picked.append(port)
                if len(picked) == count:
                    break
        _cursors[block] = cursor
    if len(picked) < count:
        raise OSError(f"only {len(picked)} of {count} ports free in {block}")
    return picked


def free_ports(count: int = 1, host: str = LOCALHOST) -> list[int]:
    """Return ``count`` distinct TCP ports that were free a moment ago.

    All sockets stay bound until every port is picked, so the ports differ. Another
    process may still take one before the caller binds it; process managers retry.
    Under pytest-xdist the ports come from the worker's own block
    (:func:`worker_port_block`), so parallel tests never pick the same port.
    """
    block = worker_port_block()
    if block is not None:
        return _ports_from_block(block, count, host)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = LOCALHOST) -> int:
    """Return one TCP port that was free a moment ago."""
    return free_ports(1, host)[0]


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.2,
    message: str = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Exceptions from ``predicate`` count as "not yet" until the timeout; the last one
    is chained to the :class:`TimeoutError`.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # polled again until the deadline
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {message}") from (
                last_error
            )
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET url`` answers 200 (connection errors give False)."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=timeout).status_code == 200
    return False


def tail(path: Path, max_bytes: int = 6000) -> str:
    """The last ``max_bytes`` of a text file, or a note when it is missing."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc.strerror}>"


__all__ = [
    "LOCALHOST",
    "free_port",
    "free_ports",
    "http_ok",
    "port_is_free",
    "tail",
    "wait_until",
    "worker_port_block",
]
