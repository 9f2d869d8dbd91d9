"""tools/orthanc_rest.py's client against a real tiny HTTP server that, like Orthanc past
its keep-alive timeout, closes a kept-alive connection without answering."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tools.orthanc_rest import KEEPALIVE_EXPIRY, connect, find_series, upload


class ClosingServer:
    """Answers the first request of each connection (keep-alive) and closes the connection
    on its second request without a response. Records ``(connection, method, path)``."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.requests: list[tuple[int, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._socket.settimeout(0.1)
        number = 0
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            number += 1
            threading.Thread(target=self._one, args=(connection, number), daemon=True).start()

    def _one(self, connection: socket.socket, number: int) -> None:
        with connection, connection.makefile("rb") as reader:
            for turn in range(2):
                request = reader.readline().decode()
                if not request:
                    return
                headers = {}
                while (line := reader.readline().decode().strip()) != "":
                    name, _, value = line.partition(":")
                    headers[name.lower()] = value.strip()
                reader.read(int(headers.get("content-length", 0)))
                method, path, _ = request.split(" ", 2)
                self.requests.append((number, method, path))
                if turn == 1:
                    return  # closed with no response
                body = json.dumps([] if path == "/tools/find" else {"ID": "x", "Name": "n"})
                connection.sendall(
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n{body}".encode()
                )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


@pytest.fixture
def server() -> Iterator[ClosingServer]:
    running = ClosingServer()
    yield running
    running.close()


def test_a_get_is_sent_again_when_the_server_closed_the_connection(server) -> None:
    with connect(server.url, timeout=10) as client:
        assert client.get_system()["Name"] == "n"
        assert client.get_system()["Name"] == "n"  # the reused connection is dropped
    assert server.requests == [(1, "GET", "/system"), (1, "GET", "/system"), (2, "GET", "/system")]


def test_a_find_is_sent_again_too(server) -> None:
    with connect(server.url, timeout=10) as client:
        assert find_series(client, "1.2.3") == []
        assert find_series(client, "1.2.3", "SEG") == []
    assert [(c, m) for c, m, _ in server.requests] == [(1, "POST"), (1, "POST"), (2, "POST")]


def test_an_upload_is_not_sent_twice(server) -> None:
    with connect(server.url, timeout=10) as client:
        assert upload(client, b"first") == "x"
        with pytest.raises(httpx.RemoteProtocolError):
            upload(client, b"second")
    assert server.requests == [(1, "POST", "/instances"), (1, "POST", "/instances")]


def test_an_idle_connection_is_not_reused(server) -> None:
    with connect(server.url, timeout=10) as client:
        client.get_system()
        time.sleep(KEEPALIVE_EXPIRY + 0.2)
        client.get_system()
    assert server.requests == [(1, "GET", "/system"), (2, "GET", "/system")]
