"""``GET /api/worklist/performed`` lists the node's claims on other worklists (real HTTP)."""

from __future__ import annotations

from pathlib import Path

from node.state.performed import PerformedStore
from tests.support.admin import served_node


def test_the_claims_are_listed_for_viewers_without_their_transaction_uid(
    tmp_path: Path,
) -> None:
    with served_node(tmp_path / "var") as served:
        store = PerformedStore(served.node.db)
        claim = store.add(
            source="ris",
            workitem_uid="1.2.3.4",
            transaction_uid="9.8.7.6",
            rule="chest",
            workitem={},
            now=served.node.clock(),
        )
        store.update(claim.id, served.node.clock(), state="canceled", reason="job 3 failed")
        with served.client() as anonymous:
            assert anonymous.get("/api/worklist/performed").status_code == 401
        with served.client(served.viewer_token) as viewer:
            answer = viewer.get("/api/worklist/performed")
        assert answer.status_code == 200, answer.text
        (row,) = answer.json()
        assert row["workitem_uid"] == "1.2.3.4" and row["source"] == "ris"
        assert (row["state"], row["reason"], row["rule"]) == ("canceled", "job 3 failed", "chest")
        assert "9.8.7.6" not in answer.text
