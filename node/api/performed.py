"""``GET /api/worklist/performed``: the workitems this node claimed on other worklists."""

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query

from node.api.auth import Principal
from node.api.routes import Dependency

if TYPE_CHECKING:
    from node.app import Node


def performed_router(node: "Node", viewer: Dependency) -> APIRouter:
    router = APIRouter(prefix="/api")
    Viewer = Annotated[Principal, Depends(viewer)]

    @router.get("/worklist/performed", tags=["worklist"])
    def performed(
        _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        """Claims on other worklists' workitems, newest first: source, workitem UID, rule,
        state (claiming, fetching, running, completed, canceled, lost), pull, job, last
        progress and the reason of a cancel (the Transaction UID is not shown)."""
        return node.remote_performer.claims(limit)

    return router
