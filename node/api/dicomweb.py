"""HTTP routes for DICOMweb and pull mode (an :class:`APIRouter` included by ``create_app``).

``POST /dicomweb/studies[/{study}]``
    STOW-RS into the spool (see :mod:`node.dicomweb.receive` for statuses).
``POST /api/pull``
    ``{"source", "study_uid" | "series_uid", "rule"?}``: queue a pull; 202 with the pull.
``GET /api/pull/{id}``
    The pull's state and per-series progress.
``POST /api/notify/orthanc``
    The Orthanc plugin's "stable series" (or "send study") notification; queues a pull.
``GET /api/studies/{study_uid}/status``
    What the node knows of a study: series, pulls, jobs, and a one-word summary.

All of them need a bearer token (:class:`~node.api.tokens.TokenAuth`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from node.api.tokens import TokenAuth
from node.app import Node
from node.dicomweb.receive import (
    BadRequest,
    MultipartParseError,
    StowParser,
    StowReceiver,
    StowResult,
    UnsupportedMediaType,
    parse_content_type,
)
from node.errors import NotFound
from node.spool import is_valid_uid

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"


class PullRequest(BaseModel):
    """Body of ``POST /api/pull``."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    study_uid: str | None = None
    series_uid: str | None = None
    #: Restrict processing to this rule (its match conditions still apply).
    rule: str | None = None

    @model_validator(mode="after")
    def _uids(self) -> PullRequest:
        if not self.study_uid and not self.series_uid:
            raise ValueError("give study_uid, series_uid or both")
        for uid in (self.study_uid, self.series_uid):
            if uid and not is_valid_uid(uid):
                raise ValueError(f"not a valid UID: {uid[:70]!r}")
        return self


class OrthancNotification(BaseModel):
    """Body of ``POST /api/notify/orthanc`` (sent by ``orthanc/ainode_plugin.py``)."""

    model_config = ConfigDict(extra="ignore")

    source: str = Field(min_length=1)
    study_uid: str
    series_uid: str | None = None
    event: str = "stable-series"
    orthanc_study_id: str | None = None
    orthanc_series_id: str | None = None
    rule: str | None = None


def _study_status(node: Node, study_uid: str) -> dict[str, Any]:
    progress = node.pulls.study_progress(study_uid)
    series = [
        {
            "series_uid": row.series_uid,
            "modality": row.modality,
            "instances": row.instances,
            "expected": row.expected,
            "state": row.state,
            "generation": row.generation,
        }
        for row in progress
    ]
    jobs = [
        {
            "id": job.id,
            "series_uid": job.series_uid,
            "generation": job.generation,
            "rule": job.rule,
            "plugin": job.plugin,
            "state": job.state,
            "destinations": list(job.destinations),
            "error": job.error,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
        }
        for row in progress
        for job in node.queue.jobs(series_uid=row.series_uid)
    ]
    pulls = [pull.as_json() for pull in node.pulls.for_study(study_uid)]
    states = {job["state"] for job in jobs}
    if not series and not pulls:
        summary = "unknown"
    elif any(p["state"] in ("queued", "running") for p in pulls) or any(
        s["state"] == "receiving" for s in series
    ):
        summary = "receiving"
    elif states & {"queued", "running", "exporting"}:
        summary = "processing"
    elif "failed" in states or any(p["state"] == "failed" for p in pulls):
        summary = "failed"
    elif "skipped" in states and "done" not in states:
        summary = "skipped"  # input outside what the routines take: nothing ran, nothing broke
    elif jobs:
        summary = "done"
    else:
        summary = "no-job"  # received, but no rule matched
    return {"study_uid": study_uid, "status": summary, "series": series, "jobs": jobs,
            "pulls": pulls}  # fmt: skip


def dicomweb_router(node: Node, auth: TokenAuth | None = None) -> APIRouter:
    """The routes above, bound to ``node``."""
    auth = auth or TokenAuth(node.settings.dicomweb)
    receiver = StowReceiver(
        node.ingestor, max_part_bytes=node.settings.dicomweb.max_part_mb * 1024 * 1024
    )
    router = APIRouter()
    authenticated = Depends(auth.identify)

    async def stow(request: Request, caller: str, study_uid: str | None) -> JSONResponse:
        try:
            boundary = parse_content_type(request.headers.get("content-type", ""))
        except UnsupportedMediaType as exc:
            return JSONResponse({"message": str(exc)}, status_code=415)
        except BadRequest as exc:
            return JSONResponse({"message": str(exc)}, status_code=400)
        parser = StowParser(boundary, max_part_bytes=receiver.max_part_bytes)
        result = StowResult()
        try:
            async for chunk in request.stream():
                parser.feed(chunk)
                for part in parser.take():
                    await run_in_threadpool(receiver.store_part, part, result, study_uid=study_uid)
            if not parser.ended:
                raise MultipartParseError("the body ended before the closing boundary")
            await run_in_threadpool(receiver.finished, result)
        except MultipartParseError as exc:
            result.syntax_error = str(exc) or "malformed multipart body"
            log.warning("STOW-RS body malformed caller=%s error=%s", caller, result.syntax_error)
        finally:
            parser.discard()
        code = result.http_status()
        log.info(
            "STOW-RS request caller=%s status=%d stored=%d duplicates=%d failed=%d",
            caller,
            code,
            len(result.stored),
            result.duplicates,
            len(result.failed),
        )
        return JSONResponse(result.response(), status_code=code, media_type=DICOM_JSON)

    @router.post("/dicomweb/studies", tags=["dicomweb"])
    async def stow_studies(request: Request, caller: str = authenticated) -> JSONResponse:
        """STOW-RS (PS3.18 10.5): store instances of any study."""
        return await stow(request, caller, None)

    @router.post("/dicomweb/studies/{study_uid}", tags=["dicomweb"])
    async def stow_study(
        request: Request, study_uid: str, caller: str = authenticated
    ) -> JSONResponse:
        """STOW-RS into one study: instances of another study fail (0xA901)."""
        return await stow(request, caller, study_uid)

    def queue_pull(
        body: PullRequest | OrthancNotification, origin: str, response: Response
    ) -> dict[str, Any]:
        """Submit the pull a request body asks for; an unknown source is a 404. The same
        request while its pull is queued or running answers that pull with 200 (not 202)."""
        try:
            pull, created = node.puller.request(
                source=body.source,
                study_uid=body.study_uid,
                series_uid=body.series_uid,
                rule=body.rule,
                origin=origin,
            )
        except NotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        if not created:
            response.status_code = 200
        return {**pull.as_json(), "created": created}

    @router.post("/api/pull", status_code=202, tags=["pull"])
    def pull(body: PullRequest, response: Response, caller: str = authenticated) -> dict[str, Any]:
        """Queue a pull of a study or series from a declared source (202), or answer the
        same request's queued or running pull (200)."""
        return queue_pull(body, f"api:{caller}", response)

    @router.get("/api/pull/{pull_id}", tags=["pull"])
    def pull_status(pull_id: int, caller: str = authenticated) -> dict[str, Any]:
        found = node.pulls.get(pull_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no pull {pull_id}")
        return found.as_json()

    @router.post("/api/notify/orthanc", status_code=202, tags=["pull"])
    def notify_orthanc(
        body: OrthancNotification, response: Response, caller: str = authenticated
    ) -> dict[str, Any]:
        """An Orthanc series became stable (or a user pressed "Send to AI node"): pull it."""
        for uid in (body.study_uid, body.series_uid):
            if uid and not is_valid_uid(uid):
                raise HTTPException(status_code=422, detail="not a valid UID")
        return queue_pull(body, f"orthanc:{body.event}", response)

    @router.get("/api/studies/{study_uid}/status", tags=["pull"])
    def study_status(study_uid: str, caller: str = authenticated) -> dict[str, Any]:
        """Series, pulls and jobs the node has for a study, with a summary word."""
        return _study_status(node, study_uid)

    return router
