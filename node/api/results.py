"""Stored results over HTTP: a job's objects (list, download) and shadow predictions.

Handlers translate HTTP to :mod:`node.admin.shadow`; the CLI (``ainode jobs
shadow``) calls the same functions.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from node.admin.service import AdminService
from node.admin.shadow import result_file, result_objects, shadow_predictions
from node.api.auth import Principal

Dependency = Callable[[Request], Awaitable[Principal]]


def results_router(admin: AdminService, viewer: Dependency) -> APIRouter:
    """``/api/jobs/{id}/results`` and ``/api/shadow/predictions`` (viewers may read)."""
    router = APIRouter(prefix="/api")
    Viewer = Annotated[Principal, Depends(viewer)]

    @router.get("/jobs/{job_id}/results", tags=["jobs"])
    def job_results(job_id: int, _: Viewer) -> list[dict[str, Any]]:
        """The DICOM objects a job stored (also for shadow jobs, whose results are not sent)."""
        job, _events, _info = admin.job(job_id)
        return result_objects(job)

    @router.get("/jobs/{job_id}/results/{name}", tags=["jobs"])
    def job_result_file(job_id: int, name: str, _: Viewer) -> FileResponse:
        """Download one stored object (``application/dicom``) or ``prediction.json``."""
        job, _events, _info = admin.job(job_id)
        path = result_file(job, name)
        media = "application/json" if path.suffix == ".json" else "application/dicom"
        return FileResponse(path, media_type=media, filename=name)

    @router.get("/shadow/predictions", tags=["jobs"])
    def predictions(
        _: Viewer,
        rule: str = "",
        plugin: str = "",
        series_uid: str = "",
        state: Annotated[str, Query(description="job state; empty for all")] = "done",
    ) -> dict[str, Any]:
        """Shadow jobs' predictions per series (format in ``node/admin/README.md``)."""
        return shadow_predictions(
            admin.queue, rule=rule, plugin=plugin, series_uid=series_uid, state=state
        )

    return router
