"""Worklist roles and the console's worklist page, on a node served over real HTTP."""

from __future__ import annotations

import pytest

from tests.support.admin import served_node
from tests.support.jobs import enqueue_job
from tools.net import wait_until

pytestmark = pytest.mark.slow

GLOBAL = "1.2.840.10008.5.1.4.34.5"


def workitem() -> list[dict]:
    return [{
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741204": {"vr": "LO", "Value": ["Console check"]},
        "00404018": {"vr": "SQ", "Value": [{
            "00080100": {"vr": "SH", "Value": ["LUNGS"]},
            "00080102": {"vr": "SH", "Value": ["99AINODE"]},
        }]},
        "00404021": {"vr": "SQ", "Value": [{
            "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.10.1001.70"]},
            "0020000E": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.10.1001.70.1"]},
            "00080054": {"vr": "AE", "Value": ["NOWHERE"]},
        }]},
    }]  # fmt: skip


def test_roles_and_the_console_page(tmp_path):
    config = {"worklist": {"tasks": {"99AINODE^LUNGS": "ct_lungs"}, "poll_seconds": 0.1}}
    with served_node(tmp_path / "var", config) as served:
        viewer, admin = served.client(served.viewer_token), served.client(served.admin_token)
        uid = "1.2.826.0.1.3680043.10.1001.71"
        refused = viewer.post(f"/dicomweb/workitems?{uid}", json=workitem())
        assert refused.status_code == 403 and "viewer" in refused.json()["message"]
        assert served.node.worklist.store.get(uid) is None
        assert viewer.post(f"/dicomweb/workitems/{GLOBAL}/subscribers/VIEWER").status_code == 201
        assert admin.post(f"/dicomweb/workitems?{uid}", json=workitem()).status_code == 201
        # The input names an AE no source serves: the node cancels it, saying why.
        wait_until(lambda: served.node.worklist.store.get(uid).state == "CANCELED", 30)
        assert viewer.get("/dicomweb/workitems", params={"SOPInstanceUID": uid}).status_code == 200
        page = viewer.get("/worklist")
        assert page.status_code == 200
        assert uid in page.text and "CANCELED" in page.text and "Console check" in page.text
        assert "no configured source serves NOWHERE" in page.text
        assert "99AINODE^LUNGS" in page.text
        # A job performing a workitem links to it from its page.
        job_id = enqueue_job(served.node.queue, served.node.clock(), rule="workitem:ct_lungs")
        served.node.worklist.link(uid, job_id=job_id)
        job_page = viewer.get(f"/jobs/{job_id}")
        assert job_page.status_code == 200 and uid in job_page.text
        audit = admin.get("/api/audit", params={"target": f"workitem:{uid}"})
        actions = {entry["action"] for entry in audit.json()}
        assert {"workitem.create", "workitem.claim", "workitem.cancel"} <= actions
