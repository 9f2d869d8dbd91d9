"""Login throttling over real HTTP: wrong passwords are slowed, then the login is locked."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from node.api.throttle import LoginThrottle
from tests.support.admin import ADMIN_PASSWORD, VIEWER_PASSWORD, served_node


def _post_login(url: str, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=30.0, follow_redirects=False) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        return client.post(
            "/login",
            data={"username": username, "password": password, "csrf_token": token.group(1)},
        )


def test_delay_grows_per_failure_and_lock_expires() -> None:
    throttle = LoginThrottle(3, 60.0, base_delay=0.5, max_delay=1.5)
    keys = throttle.keys("Admin", "10.0.0.1")
    assert keys == ("user:admin", "addr:10.0.0.1")
    assert throttle.failed(keys, 0.0) == (0.5, [])
    assert throttle.failed(keys, 1.0) == (1.0, [])
    assert throttle.failed(keys, 2.0) == (1.5, list(keys))  # capped, and locked
    assert throttle.locked_for(keys, 10.0) == 52.0
    assert throttle.locked_for(("user:other",), 10.0) == 0.0
    assert throttle.locked_for(keys, 62.0) == 0.0
    assert throttle.failed(keys, 63.0) == (0.5, [])  # an expired lock starts over
    throttle.succeeded(keys)
    assert throttle.locked_for(keys, 63.0) == 0.0 and throttle.failed(keys, 64.0)[0] == 0.5


def test_wrong_passwords_lock_the_login_until_it_expires(tmp_path: Path) -> None:
    config = {
        "security": {
            "login_max_failures": 5,
            "login_lockout_minutes": 0.05,  # 3 s
            "login_delay_seconds": 0.05,
        }
    }
    with served_node(tmp_path, config) as served:
        # A success resets the count: 4 wrong, 1 right, 4 wrong do not lock.
        for _ in range(4):
            assert _post_login(served.url, "admin", "wrong").status_code == 401
        assert _post_login(served.url, "admin", ADMIN_PASSWORD).status_code == 303
        started = time.monotonic()
        for _ in range(4):
            assert _post_login(served.url, "admin", "wrong").status_code == 401
        # the delays grew: 0.05 + 0.1 + 0.2 + 0.4 s at least
        assert time.monotonic() - started >= 0.75
        assert _post_login(served.url, "admin", ADMIN_PASSWORD).status_code == 303

        for _ in range(5):
            assert _post_login(served.url, "admin", "wrong").status_code == 401
        locked = _post_login(served.url, "admin", ADMIN_PASSWORD)  # the 6th, right one
        assert locked.status_code == 429
        assert 1 <= int(locked.headers["Retry-After"]) <= 4
        assert "login locked" in locked.text
        # the address is locked too: another user from it is refused
        assert _post_login(served.url, "viewer", VIEWER_PASSWORD).status_code == 429

        time.sleep(3.2)
        assert _post_login(served.url, "admin", ADMIN_PASSWORD).status_code == 303

        entries = served.node.admin.audit_entries(limit=100)
        actions = [e.action for e in entries]
        assert actions.count("login.failed") == 13
        locks = {e.target for e in entries if e.action == "login.locked"}
        assert locks == {"user:admin", "addr:127.0.0.1"}
