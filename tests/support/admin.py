"""Helpers for admin API and console tests: a node served over real HTTP, login."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from node.api.app import create_app
from node.app import Node
from node.config import settings_from_mapping
from tools.net import LOCALHOST, free_ports, http_ok, wait_until
from tools.node_process import PROJECT_ROOT, NodeProcess, deep_merge, default_config

ADMIN_PASSWORD = "admin-password-1"
VIEWER_PASSWORD = "viewer-password-1"


@dataclass
class ServedNode:
    node: Node
    url: str
    admin_token: str
    viewer_token: str

    @property
    def dicom_port(self) -> int:
        return self.node.settings.node.dicom_port

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)


@contextmanager
def served_node(data_dir: Path, config: Mapping[str, Any] | None = None) -> Iterator[ServedNode]:
    """A :class:`Node` in this process with its FastAPI app on a free port (real HTTP),
    configured like a :class:`NodeProcess` (``default_config``) on the CPU."""
    dicom_port, http_port = free_ports(2)
    base = deep_merge(
        default_config(data_dir, dicom_port, http_port), {"workers": {"device": "cpu"}}
    )
    settings = settings_from_mapping(deep_merge(base, config or {}), environ={})
    node = Node(settings)
    node.start()
    app = create_app(node)
    server = uvicorn.Server(
        uvicorn.Config(app, host=LOCALHOST, port=http_port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    url = f"http://{LOCALHOST}:{http_port}"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), 30, message="node HTTP")
        if not node.admin.users.count():  # a restart on the same data_dir keeps them
            node.admin.add_user("admin", ADMIN_PASSWORD, "admin", "test-setup")
            node.admin.add_user("viewer", VIEWER_PASSWORD, "viewer", "test-setup")
        admin_token, _ = node.admin.users.create_token("admin", "tests", node.clock())
        viewer_token, _ = node.admin.users.create_token("viewer", "tests", node.clock())
        yield ServedNode(node, url, admin_token, viewer_token)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        node.stop()


def add_console_user(node: NodeProcess, name: str, password: str, role: str = "admin") -> None:
    """Add a console user to a running node's database with ``ainode users add``, as an
    admin would (the checkout's code, from its root)."""
    added = subprocess.run(
        [sys.executable, "-m", "node", "users", "add", name, "--role", role,
         "--password-stdin", "--config", str(node.config_path)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )  # fmt: skip
    assert added.returncode == 0, added.stderr


def login_session(url: str, username: str, password: str) -> tuple[httpx.Client, str]:
    """Log in through the HTML form like a browser; return the client and its CSRF token."""
    client = httpx.Client(base_url=url, timeout=30.0, follow_redirects=False)
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    response = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token.group(1)},
    )
    assert response.status_code == 303, response.text
    me = client.get("/api/me").json()
    return client, me["csrf"]
