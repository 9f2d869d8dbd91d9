"""``GET /api/retention``: disk usage (spool, results, free) and the recent deletions."""

import shutil
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query

from node.api.auth import Principal
from node.api.routes import Dependency
from node.retention_run import AUDIT_ACTION, tree_bytes
from node.state.audit import AuditLog
from node.state.retention import RetentionStore

if TYPE_CHECKING:
    from node.app import Node


def storage_report(node: "Node", limit: int = 50) -> dict[str, Any]:
    """Bytes in the spool (as the database records it) and the results, free disk, the
    watermarks, the policy, and the latest deletions (newest first, from the audit log);
    served by ``GET /api/retention`` and the console's Storage page."""
    settings = node.settings
    disk = shutil.disk_usage(settings.node.data_dir)
    entries = AuditLog(node.db).entries(action=AUDIT_ACTION, limit=limit)
    return {
        "disk": {
            "spool_bytes": RetentionStore(node.db).spool_bytes(),
            "results_bytes": tree_bytes(settings.results_dir),
            "free_bytes": disk.free,
            "total_bytes": disk.total,
            "high_watermark_bytes": settings.retention.high_watermark_mb * 1024 * 1024,
            "min_free_bytes": settings.node.min_free_disk_mb * 1024 * 1024,
        },
        "policy": settings.retention.model_dump(),
        "deletions": [{"at": e.at, "by": e.user, **e.after} for e in entries],
    }


def retention_router(node: "Node", viewer: Dependency) -> APIRouter:
    router = APIRouter(prefix="/api")
    Viewer = Annotated[Principal, Depends(viewer)]

    @router.get("/retention", tags=["retention"])
    def retention(_: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        """Disk usage, watermarks, the retention policy and the latest deletions."""
        return storage_report(node, limit)

    return router
