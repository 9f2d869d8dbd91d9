"""API tokens with an expiry: accepted until then, 401 with a message after, over real HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.admin import served_node


def test_expiring_tokens(tmp_path: Path) -> None:
    with served_node(tmp_path) as served, served.client(served.admin_token) as admin:
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        made = admin.post("/api/users/viewer/tokens", json={"name": "short", "expires_at": soon})
        assert made.status_code == 201, made.text
        body = made.json()
        assert abs(body["expires_at"] - datetime.fromisoformat(soon).timestamp()) < 1e-3
        days = admin.post("/api/users/viewer/tokens", json={"expires_in_days": 30}).json()
        assert 29.9 * 86400 < days["expires_at"] - time.time() < 30.1 * 86400
        never = admin.post("/api/users/viewer/tokens", json={"name": "forever"}).json()
        assert never["expires_at"] is None

        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        refused = admin.post("/api/users/viewer/tokens", json={"expires_at": past})
        assert refused.status_code == 422 and "future" in refused.text
        naive = admin.post("/api/users/viewer/tokens", json={"expires_at": "2099-01-01T00:00"})
        assert naive.status_code == 422 and "time zone" in naive.text

        with served.client(body["token"]) as short, served.client(never["token"]) as forever:
            assert short.get("/api/me").status_code == 200
            time.sleep(max(0.0, datetime.fromisoformat(soon).timestamp() - time.time()) + 0.3)
            expired = short.get("/api/me")
            assert expired.status_code == 401
            assert "API token 'short' expired at" in expired.json()["message"]
            assert forever.get("/api/me").status_code == 200
        audit = served.node.admin.audit_entries(action="token.create", limit=10)
        assert any(e.after and e.after.get("expires_at") for e in audit)
