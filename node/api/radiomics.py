"""``GET /api/jobs/{id}/radiomics``: a job's radiomics features as JSON or CSV.

The features are read from ``radiomics.json`` in the job's result directory, written
by the worker next to the SEG and SR (:mod:`node.results.radiomics`), so they outlive
restarts as the DICOM results do. Rows are segment x feature, with units and codes.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from node.admin.service import AdminService
from node.api.auth import Principal
from node.errors import NotFound
from node.results.radiomics import CSV_COLUMNS, read_radiomics, table_csv

Dependency = Callable[[Request], Awaitable[Principal]]

_CSV_EXAMPLE = ",".join(CSV_COLUMNS) + "\n1,Right lung,right-lung,firstorder,Mean,-812.4,...\n"


def radiomics_router(admin: AdminService, viewer: Dependency) -> APIRouter:
    """The radiomics route; ``viewer`` is the auth dependency (any logged-in role)."""
    router = APIRouter(prefix="/api")
    Viewer = Annotated[Principal, Depends(viewer)]

    @router.get(
        "/jobs/{job_id}/radiomics",
        tags=["jobs"],
        response_model=None,
        responses={
            200: {
                "description": "JSON document (parameters, skipped segments, features) or CSV",
                "content": {"text/csv": {"example": _CSV_EXAMPLE}},
            },
            404: {"description": "no such job, no results yet, or no radiomics requested"},
        },
    )
    def job_radiomics(
        job_id: int,
        _: Viewer,
        output: Annotated[
            Literal["json", "csv"],
            Query(alias="format", description="json (default) or csv"),
        ] = "json",
    ) -> Response:
        """Radiomics features of a job's segments (those its template asks for).

        JSON: ``features`` (one row per segment and feature: label value, segment,
        tracking id, pyradiomics class and feature, value, UCUM unit, code),
        ``skipped`` segments with the reason, the ``parameters`` and their SHA-256.
        CSV: the same rows.
        """
        job = admin.job(job_id)[0]
        if job.result_dir is None:
            raise NotFound(f"job {job_id} has no results (state {job.state})")
        document = read_radiomics(job.result_dir)
        if document is None:
            raise NotFound(f"job {job_id} has no radiomics: its template asks for none")
        if output == "csv":
            return Response(
                table_csv(document),
                media_type="text/csv; charset=utf-8",
                headers={
                    "Content-Disposition": f'attachment; filename="job-{job_id}-radiomics.csv"'
                },
            )
        body: dict[str, Any] = {"job_id": job_id, **document}
        return JSONResponse(body)

    return router
